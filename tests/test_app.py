"""The dashboard starts and shows the runs the store holds (Streamlit's AppTest, no browser)."""

from streamlit.testing.v1 import AppTest

from engine.paths import REPO_ROOT
from engine.store.runs import RunWriter


def test_empty_state_when_there_are_no_runs(data_root):
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=30).run()
    assert not at.exception
    assert at.title[0].value == "Runs"
    assert "No runs yet" in at.info[0].value


def test_runs_table_lists_a_finished_run(data_root):
    writer = RunWriter.create("r1", method="mallows_po", name="mallows on sentiment", config={})
    writer.set_status("running", pid=None)
    writer.set_status("finished")
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=30).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table.loc[0, "name"] == "mallows on sentiment" and table.loc[0, "status"] == "finished"
