"""Several seeds of one experiment: a run folder each, and the spread of every metric."""

import csv
import html
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np
import pytest

import run_experiment
from analysis import config as config_module
from analysis.seeds import aggregate_runs, mean_and_spread, read_warnings

FAST = ["population.n_agents=4", "training.rounds=3", "accuracy.pilot_sizes=[20, 60, 200]",
        "accuracy.pilot_repeats=1", "loop.max_iterations=1", "experiment.name='seeds'"]


def cli(*arguments: str) -> int:
    return run_experiment.main(["--quiet", *arguments])


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    status = cli(*(f"--set={o}" for o in FAST), f"--set=experiment.output_dir='{out}'", "--seeds", "0", "1", "2")
    assert status == 0
    runs = sorted(p for p in out.iterdir() if "-seeds-" not in p.name)
    (seeds,) = [p for p in out.iterdir() if "-seeds-" in p.name]
    return runs, seeds


def read(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_each_seed_runs_in_its_own_folder_and_the_spread_is_computed_from_them(three_seeds):
    runs, seeds = three_seeds
    assert len(runs) == 3
    assert {p.name for p in seeds.iterdir()} == {"summary.csv", "seeds.csv", "warnings.csv", "report.html", "figures"}
    assert (seeds / "figures" / "seed_spread.png").stat().st_size > 5000
    welfare = np.array([[float(r["welfare_realised"]) for r in read(run / "summary.csv")] for run in runs])
    assert welfare.shape == (3, 2)  # seeds x (standard, shaping)
    assert len(np.unique(welfare[:, 0])) == 3  # the seeds differ
    spread = {(r["mechanism"], r["metric"]): r for r in read(seeds / "summary.csv")}
    for k, name in enumerate(("standard", "shaping")):
        row = spread[name, "welfare_realised"]
        assert int(row["n"]) == 3
        assert float(row["mean"]) == pytest.approx(welfare[:, k].mean(), rel=1e-12)
        assert float(row["std"]) == pytest.approx(welfare[:, k].std(ddof=1), rel=1e-12)
        # Student's t with 2 degrees of freedom: t_0.975 = 4.302653 (a table's value)
        assert float(row["ci95"]) == pytest.approx(4.302653 * welfare[:, k].std(ddof=1) / np.sqrt(3), rel=1e-6)
        assert (float(row["min"]), float(row["max"])) == (welfare[:, k].min(), welfare[:, k].max())
    assert float(spread["standard", "budget_balanced"]["mean"]) == 1.0  # True counts as 1
    assert int(spread["standard", "server_profit"]["n"]) == 0  # not modelled: no value in any seed
    long = read(seeds / "seeds.csv")
    assert {int(r["seed"]) for r in long} == {0, 1, 2}
    report = (seeds / "report.html").read_text()
    difference = welfare[:, 1] - welfare[:, 0]
    assert f"{difference.mean():.4g}" in report and f"{np.sum(difference > 0)} of 3 seeds" in report
    half = 4.302653 * difference.std(ddof=1) / np.sqrt(3)
    assert f"[{difference.mean() - half:.4g}, {difference.mean() + half:.4g}]" in report
    assert f'href="../{runs[0].name}/report.html"' in report and "3/3" in report


def test_each_seeds_warnings_are_carried_into_the_seeds_folder(three_seeds):
    """One loop iteration cannot show settling: every seed warns so, and the seeds folder lists the
    warnings seed by seed (warnings.csv and the report)."""
    runs, seeds = three_seeds
    folders = {config_module.load(run / "config.toml")["experiment"]["seed"]: run for run in runs}
    said = {seed: json.loads((run / "manifest.json").read_text())["warnings"] for seed, run in folders.items()}
    assert all(w[0].startswith("the loop ran a single iteration (loop.max_iterations=1)") for w in said.values())
    assert [(int(r["seed"]), r["run"], r["warning"]) for r in read(seeds / "warnings.csv")] == [
        (seed, folders[seed].name, warning) for seed in (0, 1, 2) for warning in said[seed]]
    report = (seeds / "report.html").read_text()
    for seed in said:
        assert f'<p class="warning">Warning: seed {seed}: {html.escape(said[seed][0])}</p>' in report


def test_the_seeds_summary_prints_each_seeds_warnings_once(tmp_path, capsys):
    """Each seed's warnings reach stderr once, headed by the seed, after the summary
    (the runs themselves do not print them as well)."""
    assert run_experiment.main([*(f"--set={o}" for o in FAST), f"--set=experiment.output_dir='{tmp_path}'",
                                "--seeds", "0", "1"]) == 0
    said = {seed: json.loads((run / "manifest.json").read_text())["warnings"]
            for seed, run in ((config_module.load(p / "config.toml")["experiment"]["seed"], p)
                              for p in tmp_path.iterdir() if "-seeds-" not in p.name)}
    captured = capsys.readouterr()
    assert "seeds report: " in captured.out and "warning" not in captured.out
    warned = [line for line in captured.err.splitlines() if "warning" in line]  # not the progress bars
    assert warned == [f"seed {seed}: warning: {w}" for seed in (0, 1) for w in said[seed]]


def test_the_notes_a_config_gives_before_training_are_printed_once_for_all_seeds(tmp_path, capsys):
    """A CSV overriding a config key is noted once before the first seed trains, not once
    per seed; each seed's agents are drawn and checked before any seed trains."""
    agents = tmp_path / "agents.csv"
    agents.write_text("endowment,value\n100,2\n50,3\n80,4\n60,1\n")
    settings = [f"--set={o}" for o in FAST if not o.startswith("population.")]
    arguments = [*settings, f"--set=population.csv='{agents}'", "--set=population.value=5",
                 f"--set=experiment.output_dir='{tmp_path / 'out'}'", "--seeds", "0", "1"]
    assert cli(*arguments) == 0
    note = f"note: population.csv={str(agents)!r} gives the column value; population.value is not used"
    err = capsys.readouterr().err.splitlines()
    assert err[0] == note and err.count(note) == 1

    # endowments drawn from uniform(0.9, 3): seed 0 draws whole samples for its 3 agents,
    # seed 1 one below a sample; it is refused, with its seed, before seed 0 trains
    draws = ["--set=population.n_agents=3", "--set=population.endowment={dist='uniform', low=0.9, high=3}"]
    assert cli(*settings, *draws, f"--set=experiment.output_dir='{tmp_path / 'draws'}'", "--seeds", "0", "1") == 2
    said = capsys.readouterr().err
    assert "population.endowment: agent 0's endowment is 0.98" in said and said.endswith("(seed 1); no seed has run\n")
    assert not (tmp_path / "draws").exists()


def test_one_seed_has_no_spread_to_show(three_seeds, tmp_path):
    """A single seed's std is NaN: the report and the summary line show the mean alone."""
    runs, _ = three_seeds
    out, spread = aggregate_runs(runs[:1], tmp_path)
    assert np.isnan(spread["standard", "total_data"]["std"])
    assert "nan" not in (out / "report.html").read_text()
    assert mean_and_spread(spread["standard", "total_data"], "{:.0f}", "+/-") == (
        f"{spread['standard', 'total_data']['mean']:.0f}")
    assert mean_and_spread({"mean": 2.0, "std": 0.5}, "{:.1f}", "+/-") == "2.0 +/- 0.5"
    # an amount of utility and its std as the headline writes them: "2e-05 ± 0.0000" hid the spread
    assert mean_and_spread({"mean": 2e-5, "std": 1.4e-5}, "{:.4f}") == "2e-05 ± 1.4e-05"
    assert mean_and_spread({"mean": 2.5e9, "std": 1.5e9}, "{:.4f}") == "2.5e+09 ± 1.5e+09"


def test_a_metric_some_seeds_lack_says_over_how_many_seeds_it_is():
    """[1, nan, 3] showed "2.000 ± 1.414" under a header that speaks of every seed."""
    from analysis.seeds import _cell

    assert _cell(np.array([1.0, np.nan, 3.0]), "{:.3f}") == "2.000 ± 1.414 (2 of 3 seeds)"
    assert _cell(np.array([1.0, 2.0, 3.0]), "{:.3f}") == "2.000 ± 1.000"


def test_runs_of_different_configs_are_not_aggregated(three_seeds, tmp_path):
    runs, seeds = three_seeds
    again, spread = aggregate_runs(runs, tmp_path)  # the same runs aggregated from Python: the same numbers
    assert again.parent == tmp_path and again != seeds
    written = {(r["mechanism"], r["metric"]): r for r in read(seeds / "summary.csv")}
    assert spread.keys() == written.keys()
    for key in (("standard", "welfare_realised"), ("shaping", "total_data")):
        assert {k: float(v) for k, v in written[key].items() if k not in ("mechanism", "metric")} == spread[key]
    other = tmp_path / "other"
    assert cli(*(f"--set={o}" for o in FAST), "--set=training.rounds=2", f"--set=experiment.output_dir='{other}'") == 0
    (odd,) = other.iterdir()
    with pytest.raises(ValueError, match=rf"{odd}: training.rounds=2 differs from 3 in {runs[0]}; allowed is runs "
                                         "of one config that differ only in experiment.seed"):
        aggregate_runs([runs[0], odd], tmp_path)
    with pytest.raises(ValueError, match=r"experiment.seed=0 in 2 of the folders: allowed is each seed once"):
        aggregate_runs([runs[0], runs[0]], tmp_path)
    with pytest.raises(ValueError, match=rf"{tmp_path}: no config.toml there; allowed is a run folder"):
        aggregate_runs([tmp_path])


def test_run_folders_that_cannot_be_read_are_named(three_seeds, tmp_path):
    """One folder given as a string was iterated character by character ("/: no config.toml
    there"); an edited or cut summary.csv raised a bare KeyError or numpy's conversion error,
    or, a line cut short, was read with NaN for its missing fields; one without a headline
    column was refused by the plot, naming neither folder nor file; one not UTF-8 raised a
    UnicodeDecodeError; a broken manifest.json raised a JSONDecodeError, and warnings in it
    that are not a list of strings a TypeError or AttributeError, or were split into
    characters. Each is now one ValueError naming the folder, and no seeds folder is made
    for them."""
    runs, _ = three_seeds
    with pytest.raises(ValueError, match=rf"^folders='{runs[0]}': allowed is a list of run folders"):
        aggregate_runs(str(runs[0]), tmp_path)
    copies = [tmp_path / f"run{i}" for i in range(2)]
    for run, copy in zip(runs, copies):
        shutil.copytree(run, copy)
    out = tmp_path / "out"
    out.mkdir()
    summary = copies[1] / "summary.csv"
    rows = summary.read_text().splitlines()
    column = rows[0].split(",").index("welfare_realised")
    without = "\n".join(",".join(cell for k, cell in enumerate(row.split(",")) if k != column) for row in rows)
    for text, message in [
        ("", "its summary.csv has no mechanism"),
        ("\n".join(rows[:2]), r"its summary.csv holds mechanisms \['standard'\] and metrics other than"),
        ("\n".join([rows[0], rows[1].replace(",4,", ",yes,", 1), *rows[2:]]),
         r"its summary.csv cannot be read \(ValueError: could not convert string to float: 'yes'\)"),
        ("\n".join([*rows[:2], rows[2].rsplit(",", 1)[0]]), "its summary.csv's line 3 has fewer fields than"),
        ("\n".join([rows[0], rows[1] + ",1", *rows[2:]]), "its summary.csv's line 2 has more fields than its header"),
        (without, "its summary.csv has no column 'welfare_realised'; allowed is the summary.csv its run wrote"),
        (b"\xff", r"its summary.csv cannot be read \(UnicodeDecodeError: "),
    ]:
        summary.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(ValueError, match=rf"^{copies[1]}: {message}"):
            aggregate_runs(copies, out)
    summary.write_text(without)  # the only seed, or every seed, without it: the plot refused it
    with pytest.raises(ValueError, match=rf"^{copies[1]}: its summary.csv has no column 'welfare_realised'"):
        aggregate_runs(copies[1:], out)
    summary.write_text("\n".join(rows))
    manifest = copies[1] / "manifest.json"
    written = json.loads(manifest.read_text())
    manifest.write_text("{")
    with pytest.raises(ValueError, match=rf"^{copies[1]}: its manifest.json cannot be read \(Expecting"):
        aggregate_runs(copies, out)
    for warnings in (None, [1, 2], "oops"):
        manifest.write_text(json.dumps({**written, "warnings": warnings}))
        message = re.escape(f"{copies[1]}: its manifest.json's warnings={warnings!r}: allowed is a list of strings")
        for call in (lambda: aggregate_runs(copies, out), lambda: read_warnings(copies[1])):
            with pytest.raises(ValueError, match=f"^{message}"):
                call()
    assert not any(out.iterdir())


def by_seed(folders) -> dict[int, list[dict]]:
    """{experiment.seed: the run's summary.csv rows} of run folders."""
    return {config_module.load(f / "config.toml")["experiment"]["seed"]: read(f / "summary.csv")
            for f in folders}


def test_seeds_run_in_processes_give_the_runs_of_one_process(three_seeds, tmp_path, capfd):
    runs, _ = three_seeds
    out = tmp_path / "jobs"
    assert cli(*(f"--set={o}" for o in FAST), f"--set=experiment.output_dir='{out}'",
               "--seeds", "1", "0", "--jobs", "2") == 0
    err = capfd.readouterr().err  # each worker's warnings, headed by its seed, once
    for seed in (0, 1):
        assert err.count(f"seed {seed}: warning: the loop ran a single iteration") == 1
    parallel = [p for p in out.iterdir() if "-seeds-" not in p.name]
    assert len(parallel) == 2 and len([p for p in out.iterdir() if "-seeds-" in p.name]) == 1
    sequential = by_seed(runs)
    assert by_seed(parallel) == {0: sequential[0], 1: sequential[1]}


def finished_one(checkpoint: Path) -> bool:
    """Whether the run whose ``checkpoint`` this is (written after its pilot and after
    each training, atomically) has finished a loop iteration."""
    return run_experiment.load_checkpoint(checkpoint.parent).result.n_iterations >= 1


def two_seeds_checkpointed(tmp_path: Path) -> subprocess.Popen:
    """The command running seeds 0 and 1 in two processes, in a session of its own, once both
    seeds have checkpointed their first iteration (of 3 that would take minutes)."""
    settings = [f"--set={o}" for o in FAST if not o.startswith(("loop.", "training.rounds"))]
    command = [sys.executable, "run_experiment.py", "--quiet", *settings, "--set=training.rounds=300",
               "--set=loop.max_iterations=3", "--set=loop.tolerance=1e-9",
               f"--set=experiment.output_dir='{tmp_path}'", "--seeds", "0", "1", "--jobs", "2"]
    root = Path(run_experiment.__file__).resolve().parent
    process = subprocess.Popen(command, cwd=root, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while sum(finished_one(c) for c in tmp_path.glob("*/checkpoint.pkl")) < 2 and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoints within 300 s"
        time.sleep(0.05)
    return process


def stopped_seeds(tmp_path: Path, reason: str) -> str:
    """What the command says of seeds 0 and 1, each stopped for ``reason`` with its folder
    in ``tmp_path`` kept, at least one loop iteration checkpointed and fewer than 3 (one seed
    may go on training before the other's first finished iteration)."""
    folders = sorted(tmp_path.iterdir())
    assert len(folders) == 2 and all((f / "checkpoint.pkl").is_file() for f in folders)
    seeds = {config_module.load(f / "config.toml")["experiment"]["seed"]: f for f in folders}
    saved = {s: run_experiment.load_checkpoint(seeds[s]).result for s in (0, 1)}
    assert all(1 <= state.n_iterations < 3 for state in saved.values())
    return "".join(f"seed {s}: {reason}; {run_experiment.kept(saved[s])}: --resume {shlex.quote(str(seeds[s]))} "
                   "continues the run; " for s in (0, 1)) + "the seeds finished: none\n"


def test_ctrl_c_stops_seeds_running_in_processes_at_their_last_checkpoint(tmp_path):
    """A real SIGINT to the command's process group, as a terminal's Ctrl-C sends it, once
    both seeds have checkpointed their first iteration: exit 130, each seed's folder kept
    with how to resume it."""
    process = two_seeds_checkpointed(tmp_path)
    os.killpg(process.pid, signal.SIGINT)
    err = process.communicate(timeout=300)[1]
    assert process.returncode == 130, err
    assert err == "\ninterrupted; " + stopped_seeds(tmp_path, "interrupted")


@pytest.mark.parametrize("to", ["the command", "its process group"])
def test_sigterm_stops_seeds_running_in_processes_as_ctrl_c_does(tmp_path, to):
    """A real SIGTERM (kill's default, a scheduler's stop) to the command alone ended it at
    once, silently, and the orphaned workers never exited; to its process group (as timeout
    and systemd send it) it killed the workers, and the command blamed a worker killed,
    perhaps out of memory. Now the command exits 143 as Ctrl-C does, with each seed's folder
    kept and how to resume it, and no process of its session left."""
    process = two_seeds_checkpointed(tmp_path)
    if to == "the command":
        process.send_signal(signal.SIGTERM)
    else:
        os.killpg(process.pid, signal.SIGTERM)
    err = process.communicate(timeout=300)[1]
    assert process.returncode == 143, err
    assert err == "\ninterrupted; " + stopped_seeds(tmp_path, "interrupted")
    assert_session_ended(process)


def test_a_killed_worker_stops_the_seeds_with_one_line_naming_their_checkpoints(tmp_path):
    """One worker killed (SIGKILL, as the out-of-memory killer sends it) ends the pool and every
    seed it runs: the command printed a BrokenProcessPool traceback naming no seed or folder.
    Now one error line (exit 1) says what happened and how to resume each seed."""
    process = two_seeds_checkpointed(tmp_path)
    workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and children_of(process.pid, p)]
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)
    err = process.communicate(timeout=300)[1]
    assert process.returncode == 1, err
    reason = ("stopped: a worker process ended abruptly (killed by a signal, or out of memory: fewer --jobs use less), "
              "which ends every seed the pool runs")
    assert "error: " + stopped_seeds(tmp_path, reason) in err.splitlines(keepends=True), err


def assert_session_ended(process: subprocess.Popen) -> None:
    """Wait up to 30 s for every process of ``process``'s session (its workers, the pool's
    resource tracker) to end with it; fail if one outlives that."""
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "processes of the command's session outlived it by 30 s"
        time.sleep(0.1)


def children_of(parent: int, process: Path) -> bool:
    """Whether the process of /proc entry ``process`` is a --jobs worker of ``parent``."""
    try:
        ppid = int((process / "stat").read_text().rsplit(")", 1)[1].split()[1])
        return ppid == parent and b"spawn_main" in (process / "cmdline").read_bytes()
    except (OSError, IndexError, ValueError):  # a process that ended meanwhile
        return False


@pytest.mark.parametrize("arguments, fragment", [
    (["--seeds", "0", "0"], "--seeds 0 0: allowed is each seed once"),
    (["--seeds", "0", "1", "--set=experiment.seed=3"], "--seeds with --set experiment.seed: allowed is one of them"),
    (["--seeds", "0", "-1"], "experiment.seed=-1: allowed is a whole number from 0 to 2**63 - 1"),
    (["--seeds", "0", "--resume", "runs/x"], "--seeds with --resume: allowed is one of them (resume each seed's run "
     "folder, all with the same --set loop.max_iterations, then aggregate them with analysis.seeds.aggregate_runs)"),
    (["--seeds", "0", "1", "--set=training.lr=1e9"],
     "training.lr=1000000000.0: local training of client 0 diverged"),
    (["--seeds", "0", "1", "--jobs", "2", "--set=training.lr=1e9"],
     "training.lr=1000000000.0: local training of client 0 diverged"),
    (["--seeds", "0", "--jobs", "0"], "--jobs 0: allowed is an integer >= 1"),
    (["--jobs", "2"], "--jobs 2 without --seeds: allowed only with --seeds"),
])
def test_seed_mistakes_exit_2_with_one_line(arguments, fragment, capsys, tmp_path):
    """Refused before any run, or, for training that diverges, stopped at the seed it
    diverged in, with the seeds finished before it named."""
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "config.toml").write_text("")
    arguments = [a.replace("runs/x", str(tmp_path / "runs" / "x")) for a in arguments]
    assert cli(*arguments, f"--set=experiment.output_dir='{tmp_path / 'out'}'") == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert not list((tmp_path / "out").glob("*"))  # nothing measured, nothing kept


def test_a_seed_refused_at_its_start_stops_the_seeds_not_yet_started(tmp_path):
    """Two processes, four seeds, the first refused as it starts (its endowments exceed the
    training pool): the seed running beside it finishes and the two not yet started never
    run. All were submitted up front, and the pool's call queue ran seed 2 all the same."""
    good = config_module.load(None, [*FAST, f"experiment.output_dir='{tmp_path}'"])
    configs = {seed: {**good, "experiment": {**good["experiment"], "seed": seed}} for seed in (1, 0, 2, 3)}
    configs[1]["population"] = {**good["population"], "endowment": 1000}
    with pytest.raises(config_module.ConfigError) as error:
        run_experiment.run_in_processes(configs, 2, quiet=True)
    folders = {config_module.load(f / "config.toml")["experiment"]["seed"]: f for f in tmp_path.iterdir()}
    assert set(folders) == {0} and (folders[0] / "report.html").is_file()
    assert str(error.value) == ("seed 1: population.endowment=1000 with population.n_agents=4: the agents' "
                                "endowments total 4000 samples; allowed is a total of at most 1222, the 1438 "
                                "training samples of data.dataset='digits' less the data.validation_fraction=0.15 "
                                f"held out; the seeds finished: {folders[0]} (seed 0)")


def test_every_seeds_endowments_are_checked_against_the_data_before_any_seed_runs(tmp_path, capsys):
    """Lognormal endowments whose draw for seed 1 exceeds the training pool: refused with
    its seed before seeds 0 and 2 (listed first) train; they used to train fully first."""
    out = tmp_path / "out"
    endowment = "--set=population.endowment={dist='lognormal', mean=5.6, sigma=0.4}"
    assert cli(*(f"--set={o}" for o in FAST), endowment, f"--set=experiment.output_dir='{out}'",
               "--seeds", "0", "2", "1", "3") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: population.endowment={'dist': 'lognormal', 'mean': 5.6, 'sigma': 0.4} with "
                          "population.n_agents=4: the agents' endowments total ")
    assert err.endswith("less the data.validation_fraction=0.15 held out (seed 1); no seed has run\n")
    assert err.count("\n") == 1 and not out.exists()


def copies(runs: list[Path], where: Path, name: str) -> list[Path]:
    """Copies of the run folders ``runs`` under ``where``, named ``name``-0, ``name``-1 ...,
    their configs' experiment.name set to ``name``."""
    made = []
    for k, run in enumerate(runs):
        copy = where / f"{name}-{k}"
        shutil.copytree(run, copy)
        config = config_module.load(copy / "config.toml", [f"experiment.name={json.dumps(name)}"])
        (copy / "config.toml").write_text(config_module.dumps(config), encoding="utf-8")
        made.append(copy)
    return made


def test_the_seeds_reports_links_resolve_whatever_the_name(three_seeds, tmp_path):
    """A name with '#', '%' or '?' broke the links to each seed's report: they were
    HTML-escaped but not URL-quoted, so a browser read '#2 50%...' as a fragment."""
    runs, _ = three_seeds
    out, _ = aggregate_runs(copies(runs, tmp_path, "trial#2 50%?"), tmp_path / "seeds")
    report = out / "report.html"
    hrefs = [html.unescape(h) for h in re.findall(r'href="([^"]*)"', report.read_text(encoding="utf-8"))]
    assert len(hrefs) == 3
    for href in hrefs:  # as a browser resolves them
        url = urlsplit(urljoin(report.resolve().as_uri(), href))
        assert (url.query, url.fragment) == ("", "") and Path(unquote(url.path)).is_file(), href


def test_the_longest_name_allowed_fits_the_seeds_folder(three_seeds, tmp_path):
    """A name of 236 bytes fit a run folder but not <name>-seeds-<timestamp>: every seed
    trained, then an OSError. experiment.name is held to what the seeds folder fits,
    with its counter of two digits, in a file name of 255 bytes."""
    runs, _ = three_seeds
    longest = "é" * (config_module.MAX_NAME_BYTES // 2) + "n" * (config_module.MAX_NAME_BYTES % 2)
    assert len(longest.encode()) == config_module.MAX_NAME_BYTES
    out, _ = aggregate_runs(copies(runs[:2], tmp_path, longest), tmp_path / "seeds")
    assert len(f"{out.name}-99".encode()) == 255
    with pytest.raises(config_module.ConfigError, match=rf"experiment.name='{longest}n': allowed is a name of at "
                                                        rf"most {config_module.MAX_NAME_BYTES} bytes in UTF-8"):
        config_module.load(None, [f"experiment.name='{longest}n'"])


def test_seeds_resumed_with_different_iteration_limits_are_told_to_agree(three_seeds, tmp_path):
    """A seed's warning says to --resume it with a larger loop.max_iterations, which
    aggregate_runs then refused without saying what to do: its warning and the refusal
    now both say to resume every seed's run with the same one (the largest)."""
    runs, _ = three_seeds
    said = json.loads((runs[0] / "manifest.json").read_text())["warnings"][0]
    assert said.endswith("--resume the run with a larger loop.max_iterations to go on (each seed's run of a --seeds "
                         "experiment with the same one, for analysis.seeds.aggregate_runs to compare them)")
    first, resumed = copies(runs[:2], tmp_path, "seeds")
    config = config_module.load(resumed / "config.toml", ["loop.max_iterations=3"])  # as --resume writes it
    (resumed / "config.toml").write_text(config_module.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError) as error:
        aggregate_runs([first, resumed], tmp_path / "seeds")
    assert str(error.value) == (f"{resumed}: loop.max_iterations=3 differs from 1 in {first}; allowed is runs of one "
                                "config that differ only in experiment.seed (resume every seed's run with the same "
                                "loop.max_iterations: python run_experiment.py --resume <run folder> --set "
                                "loop.max_iterations=3; a run whose loop has settled within the loop.tolerance it "
                                "resumes with only rewrites its report)")


def test_a_seeds_report_that_fails_names_the_seeds_run_folders(tmp_path, capsys, monkeypatch):
    """A failure while the seeds folder was written (its figure, here) was a traceback after
    every seed had run; now it is one line, exit status 1, naming the seeds' folders. The
    seeds folder it began (its CSVs written, no report) is removed: it was left, unnamed,
    and aggregating again made a second one."""
    from analysis import plots

    def failing(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "seed_spread", failing)
    assert cli(*(f"--set={o}" for o in FAST), f"--set=experiment.output_dir='{tmp_path}'", "--seeds", "0", "1") == 1
    runs = sorted((p for p in tmp_path.iterdir() if "-seeds-" not in p.name),
                  key=lambda p: config_module.load(p / "config.toml")["experiment"]["seed"])
    assert len(runs) == 2 and all((run / "report.html").is_file() for run in runs)
    assert len(list(tmp_path.iterdir())) == 2  # no seeds folder
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: writing the seeds report failed (OSError: [Errno 28] No space left on device); the seeds finished: "
        f"{runs[0]}, {runs[1]}: analysis.seeds.aggregate_runs of them writes it")


def test_a_resume_stopped_before_its_report_leaves_a_folder_aggregate_runs_refuses(three_seeds, tmp_path,
                                                                                  monkeypatch):
    """A --resume rewrote config.toml (loop.max_iterations=3) as it began, but the manifest of
    the old report (of one iteration) stayed until the new report was written: stopped in
    between, each folder passed as a finished run of 3 iterations, and aggregate_runs
    averaged reports of one. The manifest, and the rest of the report, now go before
    config.toml is rewritten."""
    folders = copies(three_seeds[0][:2], tmp_path, "seeds")

    def stopped(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_experiment.ClosedLoop, "run", stopped)
    for folder in folders:
        assert cli("--resume", str(folder), "--set=loop.max_iterations=3") == 130
        assert config_module.load(folder / "config.toml")["loop"]["max_iterations"] == 3
        # nor is the old report left beside the new config.toml (helper-175)
        assert not (folder / "manifest.json").exists() and not (folder / "summary.csv").exists()
    with pytest.raises(ValueError) as error:
        aggregate_runs(folders, tmp_path / "seeds")
    assert str(error.value) == (f"{folders[0]}: no manifest.json there, so its run (or a --resume of it) has not "
                                "finished; allowed is a finished run folder (python run_experiment.py --resume "
                                "<run folder> finishes it)")


def test_seeds_whose_population_csv_changed_between_them_are_not_aggregated(tmp_path):
    """aggregate_runs compared the configs, which hold population.csv's path only: seeds run
    with other agents in the file were averaged as one experiment, although their manifests'
    sha256 of the file differed (a --resume refuses a changed file)."""
    agents = tmp_path / "agents.csv"
    folders = []
    for seed, cost in ((0, 0.001), (1, 0.02), (2, 0.05)):
        agents.write_text("cost,endowment,value\n" + f"{cost},100,1.0\n" * 4)
        out = tmp_path / f"runs-{seed}"
        assert cli(*(f"--set={o}" for o in FAST), f"--set=population.csv='{agents}'", f"--set=experiment.seed={seed}",
                   f"--set=experiment.output_dir='{out}'") == 0
        (folder,) = out.iterdir()
        folders.append(folder)
    def refusal(folder, first):
        return (f"{folder}: population.csv={str(agents)!r} held other bytes than for {first} (their manifest.json's "
                "population_csv_sha256 differ); allowed is runs of one config that differ only in experiment.seed, "
                "their agents read from the same file")

    with pytest.raises(ValueError) as error:
        aggregate_runs(folders, tmp_path / "seeds")
    assert str(error.value) == refusal(folders[1], folders[0])
    manifest = folders[0] / "manifest.json"  # as written before the digest was kept: the others still compared
    kept = json.loads(manifest.read_text())
    del kept["population_csv_sha256"]
    manifest.write_text(json.dumps(kept))
    with pytest.raises(ValueError) as error:
        aggregate_runs(folders, tmp_path / "seeds")
    assert str(error.value) == refusal(folders[2], folders[1])


def test_seeds_whose_population_csv_was_edited_meanwhile_end_in_one_line(tmp_path, capsys, monkeypatch):
    """population.csv edited while --seeds ran (after seed 0, before seed 1): aggregate_runs'
    refusal was a traceback after every seed had trained. It is one line, exit status 1,
    naming why and the seeds' run folders, which are kept."""
    agents = tmp_path / "agents.csv"
    agents.write_text("cost,endowment,value\n" + "0.001,100,1.0\n" * 4)
    out = tmp_path / "runs"
    seed_run = run_experiment.run

    def editing_after_each(config, **kwargs):
        folder = seed_run(config, **kwargs)
        agents.write_text("cost,endowment,value\n" + "0.02,100,1.0\n" * 4)
        return folder

    monkeypatch.setattr(run_experiment, "run", editing_after_each)
    assert cli(*(f"--set={o}" for o in FAST), f"--set=population.csv='{agents}'",
               f"--set=experiment.output_dir='{out}'", "--seeds", "0", "1") == 1
    runs = sorted(out.iterdir(), key=lambda p: config_module.load(p / "config.toml")["experiment"]["seed"])
    assert len(runs) == 2 and all((run / "report.html").is_file() for run in runs)
    said = capsys.readouterr().err.splitlines()
    assert said[-1] == (
        f"error: the seeds report was not written: {runs[1]}: population.csv={str(agents)!r} held other bytes than "
        f"for {runs[0]} (their manifest.json's population_csv_sha256 differ); allowed is runs of one config that "
        f"differ only in experiment.seed, their agents read from the same file; the seeds' run folders are kept: "
        f"{runs[0]}, {runs[1]}")


def test_a_seed_where_two_mechanisms_tie_counts_for_neither(tmp_path):
    """Realised welfare of standard (1.0, 2.0, 3.0) and shaping (1.5, 2.0, 2.5) over three
    seeds: shaping is higher in one seed (the first), lower in one, and tied in the second,
    which does not count as higher: "1 of 3 seeds"; the paired differences (0.5, 0, -0.5)
    have mean 0 and standard deviation 0.5."""
    from analysis.report import HEADLINE
    from analysis.seeds import _write_report

    welfare = {"standard": np.array([1.0, 2.0, 3.0]), "shaping": np.array([1.5, 2.0, 2.5])}
    values = {(name, key): welfare[name] if key == "welfare_realised" else np.ones(3)
              for name in welfare for key, _, _ in HEADLINE}
    folders = [tmp_path / f"run-{seed}" for seed in range(3)]
    _write_report(tmp_path, "tie", [0, 1, 2], folders, ["standard", "shaping"], values, [[], [], []])
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert ("<tr><td>shaping</td><td>0</td><td>0.5</td><td>[-1.242, 1.242]</td><td>1 of 3 seeds</td></tr>"
            in page)


def test_an_empty_summary_cell_is_no_number_and_an_infinite_one_has_no_spread():
    """A summary.csv cell left empty is NaN (no value), not 0; a price of anarchy of inf
    among the seeds has a mean of inf and no standard deviation, computed without numpy's
    'invalid value' warning (inf - inf)."""
    import warnings

    from analysis.seeds import _number, _spread

    assert np.isnan(_number("")) and _number("True") == 1.0 and _number("0.25") == 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spread = _spread(np.array([1.5, np.inf, np.nan]))
    assert spread["n"] == 2 and spread["mean"] == np.inf and np.isnan(spread["std"]) and np.isnan(spread["ci95"])


def test_a_metric_infinite_in_some_seeds_says_in_how_many():
    """A price of anarchy of inf in one seed of three read "inf", as one infinite in all
    does (helper-170's review)."""
    from analysis.seeds import _cell

    assert _cell(np.array([1.05, np.inf, 1.1]), "{:.3f}") == "inf (inf in 1 of 3 seeds)"
    assert _cell(np.array([np.inf, np.inf]), "{:.3f}") == "inf"
    assert _cell(np.array([1.05, np.inf, np.nan]), "{:.3f}") == "inf (inf in 1 of 2 seeds) (2 of 3 seeds)"


def test_seeds_of_a_config_given_as_a_pipe_all_run_it(tmp_path):
    """A config read from a pipe (a shell's <(...)) was read once per seed: the second read
    got no bytes, and every seed after the first ran the defaults. The pipe is now read once."""
    import threading

    pipe = tmp_path / "piped.toml"
    os.mkfifo(pipe)
    text = "[experiment]\nname = 'piped'\n[training]\nrounds = 4\n"

    def feed():  # the config once, then nothing to every later read, as a shell's <(...) gives
        pipe.write_text(text)
        while True:
            pipe.write_text("")

    threading.Thread(target=feed, daemon=True).start()
    settings = [f"--set={o}" for o in FAST if not o.startswith(("training.rounds", "experiment.name"))]
    assert cli(str(pipe), *settings, f"--set=experiment.output_dir='{tmp_path / 'out'}'", "--seeds", "0", "1") == 0
    runs = [p for p in (tmp_path / "out").iterdir() if "-seeds-" not in p.name]
    configs = [config_module.load(run / "config.toml") for run in runs]
    assert sorted(c["experiment"]["seed"] for c in configs) == [0, 1]
    assert all(c["experiment"]["name"] == "piped" and c["training"]["rounds"] == 4 for c in configs)


def test_a_stop_as_the_workers_start_is_an_interruption_not_a_killed_worker(tmp_path):
    """SIGTERM to the process group as soon as the --jobs workers exist, while they import
    (seconds): they died of it before their handler was in place, the pool broke, and the
    command blamed a worker killed, out of memory perhaps (exit 1); or, landing as the
    command spawned a worker, it cut the worker's start short. The workers now start with
    the signals blocked, the command holds them back while it spawns, and it exits 143,
    interrupted, leaving no process behind."""
    settings = [f"--set={o}" for o in FAST]
    command = [sys.executable, "run_experiment.py", "--quiet", *settings, f"--set=experiment.output_dir='{tmp_path}'",
               "--seeds", "0", "1", "--jobs", "2"]
    root = Path(run_experiment.__file__).resolve().parent
    process = subprocess.Popen(command, cwd=root, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not any(children_of(process.pid, p) for p in Path("/proc").iterdir() if p.name.isdigit()):
        assert process.poll() is None and time.monotonic() < deadline, "no worker within 120 s"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGTERM)
    err = process.communicate(timeout=300)[1]
    assert process.returncode == 143, err
    # a worker cut short as it read what the command sent it printed multiprocessing's EOFError
    assert err.startswith("\ninterrupted; ") and "ended abruptly" not in err and "Traceback" not in err, err
    assert_session_ended(process)


def test_a_worker_process_the_system_refuses_stops_the_seeds_not_yet_started(tmp_path, monkeypatch):
    """Three seeds, three processes, the second process refused (EAGAIN: a container's
    limit on processes) as the pool spawns it inside submit: that was a traceback, and the
    pool had queued the seed all the same, so the first worker, once free, ran it without
    its folder ever being named. Now the seed started before it finishes, the third never
    starts, the refused one is skipped by the worker that takes it, and one error names
    fewer --jobs and the seed finished."""
    import errno
    import multiprocessing.context

    good = config_module.load(None, [*FAST, f"experiment.output_dir='{tmp_path}'"])
    configs = {seed: {**good, "experiment": {**good["experiment"], "seed": seed}} for seed in (0, 1, 2)}
    start, spawned = multiprocessing.context.SpawnProcess.start, []

    def second_refused(process):
        spawned.append(process)
        if len(spawned) == 2:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        start(process)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", second_refused)
    with pytest.raises(config_module.ConfigError) as error:
        run_experiment.run_in_processes(configs, 3, quiet=True)
    (folder,) = tmp_path.iterdir()
    assert config_module.load(folder / "config.toml")["experiment"]["seed"] == 0
    assert (folder / "report.html").is_file()
    assert str(error.value) == ("seed 1: --jobs=3: its worker process could not start (BlockingIOError: [Errno 11] "
                                "Resource temporarily unavailable); allowed is fewer --jobs; the seeds finished: "
                                f"{folder} (seed 0)")
    assert len(spawned) == 2  # the third seed was never handed to the pool
