"""Exposure: what PrefLab lets in and out. The dashboard listens on 127.0.0.1 only; names, filters and prompts
carrying SQL or HTML are stored and shown as typed; jobs never go through a shell; remote code stays off unless a
config turns it on; nothing is unpickled.
"""

from __future__ import annotations

import ast
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.paths import REPO_ROOT
from engine.store import jobs as runner
from engine.store.runs import RunWriter, StoreReader, read_run
from tests.test_reliability import dpo_config, wait_for

SOURCES = sorted([REPO_ROOT / "app.py", *(REPO_ROOT / "engine").rglob("*.py"), *(REPO_ROOT / "dashboard").rglob("*.py"),
                  *(REPO_ROOT / "bench").rglob("*.py")])
NASTY = "x'); DROP TABLE metrics; -- <script>alert(1)</script> **bold** 100%_done"


# ---------------------------------------------------------------------------------------------- listening address


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* write them) with a socket listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_dashboard_listens_on_the_loopback_address_only(data_root):
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["address"] == "127.0.0.1"
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^HOST \?= 127\.0\.0\.1$", makefile, re.M) and "--server.address $(HOST)" in makefile

    port = _free_port()  # `streamlit run app.py` as a person starts it: the address comes from .streamlit/config.toml
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                              cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _listening(port), timeout=60, poll=0.2), "the dashboard did not start"
        assert _listening(port) == ["0100007F"]  # 127.0.0.1, and no IPv4 or IPv6 wildcard
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---------------------------------------------------------------------------------------------- literal text


def _fill_nasty_store() -> None:
    for run_id, name in (("run-nasty", NASTY), ("run-plain", "plain run")):
        writer = RunWriter.create(run_id, method="dpo", name=name, config={"logging": {"run_name": name}})
        writer.log_metrics(1, {"loss": 0.5})
        writer.set_status("finished")
    RunWriter("run-nasty").append("generations", [
        {"cache_key": m, "model": m, "prompt_set": NASTY, "prompt_id": 0, "prompt": NASTY, "output": f"{m}: {NASTY}",
         "num_tokens": 3} for m in ("sft", "dpo")])


def _interpreted(at: AppTest) -> list[str]:
    """Everything a page passed through Markdown (where ** and HTML would be interpreted)."""
    kinds = ("markdown", "caption", "title", "header", "subheader", "info", "success", "warning", "error")
    return [str(e.value) for kind in kinds for e in at.get(kind)]


def _runs_shown(at: AppTest) -> list[tuple[str, str]]:
    frame = next(e for e in at.dataframe if "run_id" in e.value.columns).value
    return list(zip(frame["run_id"], frame["name"]))


def test_sql_and_html_in_names_filters_and_prompts_are_stored_and_shown_literally(data_root):
    _fill_nasty_store()
    assert read_run("run-nasty")["name"] == NASTY
    reader = StoreReader()
    stored = reader.query("SELECT prompt, output FROM generations WHERE prompt = ? ORDER BY output", [NASTY])
    assert stored["output"].tolist() == [f"dpo: {NASTY}", f"sft: {NASTY}"]
    assert reader.query("SELECT count(*) AS n FROM metrics")["n"].iloc[0] == 2  # the DROP TABLE did nothing

    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    assert sorted(_runs_shown(at)) == [("run-nasty", NASTY), ("run-plain", "plain run")]
    for typed, expected in ((NASTY, ["run-nasty"]), ("'); DROP TABLE", ["run-nasty"]), ("%_", ["run-nasty"]),
                            ("<script>", ["run-nasty"]), ("%", ["run-nasty"]), ("_", ["run-nasty"]),
                            (".*", []), ("plain", ["run-plain"])):
        at.text_input(key="runs_search").input(typed).run()
        assert not at.exception, at.exception
        assert [r for r, _ in _runs_shown(at)] == expected, typed  # matched as typed: no SQL LIKE, no regex
    assert not any("<script>" in v or "**bold**" in v for v in _interpreted(at))
    assert any(NASTY in label for label in at.selectbox(key="detail_run").options)

    at.switch_page("dashboard/pages/generations.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="gen_prompt").value == NASTY
    texts = [t.value for t in at.text]
    assert NASTY in texts and f"sft: {NASTY}" in texts
    assert not any("<script>" in v or "**bold**" in v for v in _interpreted(at))
    assert reader.query("SELECT count(*) AS n FROM metrics")["n"].iloc[0] == 2


# ---------------------------------------------------------------------------------------------- source rules


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _defaults(node: ast.AST):
    """(name, default) of function parameters and of annotated class fields (dataclass defaults)."""
    if isinstance(node, ast.arguments):
        positional = node.posonlyargs + node.args
        yield from ((a.arg, d) for a, d in zip(positional[len(positional) - len(node.defaults):], node.defaults))
        yield from ((a.arg, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None)
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        value = node.value  # field(default=X, metadata=...) declares the default X
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
            value = next((k.value for k in value.keywords if k.arg == "default"), value)
        yield node.target.id, value


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_the_source_never_uses_a_shell_pickles_or_turns_on_remote_code():
    assert len(SOURCES) > 40
    problems = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(REPO_ROOT)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if {"pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"} & {n.split(".")[0] for n in names
                                                                                        if n}:
                    problems.append(f"{where}:{node.lineno} imports a pickle module")
            for name, default in _defaults(node):
                if name == "trust_remote_code" and not (isinstance(default, ast.Constant) and default.value is False):
                    problems.append(f"{where}:{node.lineno} trust_remote_code defaults to something other than False")
        for call, func in _calls(tree):
            line = f"{where}:{call.lineno}"
            if _is_true(_keyword(call, "shell")):
                problems.append(f"{line} shell=True")
            if func in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "pty.spawn"):
                problems.append(f"{line} {func}")
            if _is_true(_keyword(call, "trust_remote_code")):
                problems.append(f"{line} trust_remote_code=True")
            if _is_true(_keyword(call, "unsafe_allow_html")):
                problems.append(f"{line} unsafe_allow_html=True")
            if func.endswith("torch.load") and not _is_true(_keyword(call, "weights_only")):
                problems.append(f"{line} torch.load without weights_only=True")
            if func.endswith(("np.load", "numpy.load")) and _is_true(_keyword(call, "allow_pickle")):
                problems.append(f"{line} np.load(allow_pickle=True)")
            if func in ("yaml.load", "yaml.unsafe_load", "pd.read_pickle", "pandas.read_pickle"):
                problems.append(f"{line} {func}")
    assert problems == []


def test_the_runner_passes_arguments_without_a_shell(data_root, tmp_path):
    """An argument full of shell syntax reaches the job as one literal argument: nothing is expanded or run."""
    canary = tmp_path / "expanded"
    sneaky = f"$(touch {canary}); `touch {canary}` && touch {canary} | x"
    run_id = runner.launch(["runs", "show", sneaky], method="dpo", name=sneaky)
    assert wait_for(lambda: not runner.pid_alive(read_run(run_id)["pid"]), timeout=60)
    log = runner.tail_log(run_id)
    assert f"error: run id {sneaky!r} is not a plain folder name" in log and not canary.exists()
    assert read_run(run_id)["name"] == sneaky


def test_remote_code_is_off_unless_the_config_turns_it_on(tiny_world, data_root, monkeypatch):
    """What the training recipe passes to transformers, with the model's config left at its default and set on."""
    import transformers

    from engine.config import config_from_dict
    from engine.recipes.preference import train_preference_model

    seen: list[tuple[str, bool]] = []

    class Stop(Exception):
        pass

    config_load = transformers.AutoConfig.from_pretrained.__func__

    def spy_config(cls, *args, **kwargs):
        seen.append(("config", kwargs.get("trust_remote_code", False)))
        return config_load(cls, *args, **kwargs)

    def spy_model(cls, *args, **kwargs):
        seen.append(("model", kwargs.get("trust_remote_code", False)))
        raise Stop  # what matters happened; training itself is not needed

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", classmethod(spy_config))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy_model))
    for setting in (None, True):
        raw = dpo_config(tiny_world, steps=1)
        if setting is not None:
            raw["model"]["trust_remote_code"] = setting
        seen.clear()
        with pytest.raises(Stop):
            train_preference_model(config_from_dict(raw), RunWriter.create(f"remote-{setting}", method="dpo",
                                                                           name="r", config={}))
        # the tokenizer's and the model's configs, then the model: every load asks for what the config says
        assert {kind for kind, _ in seen} == {"config", "model"}
        assert {flag for _, flag in seen} == {bool(setting)}, seen
