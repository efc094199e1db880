"""The mathematics, as pure numpy/torch functions: MPO mixing (mixing.py), magnetic mirror descent on finite games
(magnetic.py), evaluation statistics (statistics.py), and the bandit lab that checks every loss (bandit.py)."""
