"""One experiment over several seeds: the spread of every headline metric.

A run measures one draw of the population and one training per mechanism, so a gap
between two mechanisms means little until it is set against how much each metric moves
from seed to seed. :func:`aggregate_runs` reads the run folders of one config run with
different ``experiment.seed`` values and writes

    <output_dir>/<name>-seeds-<timestamp>/
        seeds.csv     every seed's summary, long: seed, mechanism, metric, value
        warnings.csv  every seed's warnings (a loop stopped before converging, a pilot
                      curve that does not rise ...), from its manifest: seed, run, warning
        figures/seed_spread.png  total data and realised welfare, a dot per seed
        summary.csv   per mechanism and metric: n (seeds with a value), mean, std
                      (sample, ddof = 1; NaN for one seed), ci95 (half-width of the 95%
                      t-interval of the mean), min, max
        report.html   the seeds' warnings, the headline metrics as mean +/- std, the
                      paired difference in realised welfare of each mechanism against
                      the first (the same seed is the same population and pilot, so the
                      difference is taken seed by seed: its mean +/- std, the 95%
                      t-interval of its mean, and in how many seeds it is positive),
                      and a link to each seed's report

A boolean metric (``budget_balanced``) counts as 1 or 0, so its mean is the share of
seeds where it holds. ``python run_experiment.py CONFIG --seeds 0 1 2`` runs the seeds
and aggregates them.
"""

from __future__ import annotations

import csv
import html
import json
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np
from scipy import special

from analysis import config as config_module
from analysis import plots
from analysis.report import HEADLINE, STYLE, headline_text, html_table, make_run_folder, write_csv, write_whole

#: keys in which the seeds' configs may differ: the seed, where the run folder went, and
#: where and how the run executed (``analysis.config.EXECUTION_KEYS``)
IGNORED = ("experiment.seed", "experiment.output_dir", *config_module.EXECUTION_KEYS)


def aggregate_runs(folders: list[str | Path], output_dir: str | Path | None = None
                   ) -> tuple[Path, dict[tuple[str, str], dict[str, float]]]:
    """Write the seeds folder of the run ``folders`` (see the module docstring) under
    ``output_dir`` (default: the runs' own ``experiment.output_dir``); return it and its
    summary.csv's numbers, {(mechanism, metric): {"n", "mean", "std", "ci95", "min", "max"}}.
    A failure while it writes (a full disk, Ctrl-C) removes the seeds folder it made.

    ValueError, naming the folder and the key, unless the folders hold finished runs (a
    manifest.json and summary.csv each, as their run wrote them; a run, or a --resume of
    it, that has not finished has no manifest) of one config that differ only in
    ``experiment.seed`` (and the keys of :data:`IGNORED`), each seed once, and whose
    agents, where population.csv gives them, were read from the same bytes (the sha256
    their manifests keep); where they differ in a key of the loop
    (``analysis.config.LOOP_KEYS``, which a --resume may change), it says to resume every
    seed's run with the same value."""
    if isinstance(folders, (str, Path)):  # one path: its characters were taken for folders
        raise ValueError(f"folders={str(folders)!r}: allowed is a list of run folders, e.g. [{str(folders)!r}, ...]")
    folders = [Path(f) for f in folders]
    if not folders:
        raise ValueError("folders=[]: allowed is at least one run folder")
    configs = [_config(folder) for folder in folders]
    manifests = [_manifest(folder) for folder in folders]
    _check_one_experiment(folders, configs, manifests)
    summaries = [_summary(folder) for folder in folders]
    warnings = [_warnings(manifest) for manifest in manifests]
    mechanisms = list(summaries[0])  # the same in every run: mechanisms.compare is one of the configs' keys
    metrics = list(summaries[0][mechanisms[0]])
    for folder, summary in zip(folders, summaries):  # one config, so one table: unless a file was edited
        if list(summary) != mechanisms or any(list(row) != metrics for row in summary.values()):
            raise ValueError(f"{folder}: its summary.csv holds mechanisms {list(summary)} and metrics other than "
                             f"{folders[0]}'s ({mechanisms}); allowed is the summary.csv its run wrote")
    seeds = [config["experiment"]["seed"] for config in configs]
    first = configs[0]["experiment"]
    out = make_run_folder(first["output_dir"] if output_dir is None else output_dir,
                          first["name"] + config_module.SEEDS_SUFFIX)
    try:  # a failure (a full disk, Ctrl-C) leaves no seeds folder holding part of its files
        values = {(name, key): np.array([summary[name][key] for summary in summaries])
                  for name in mechanisms for key in metrics}
        write_csv(out / "seeds.csv", [{"seed": seed, "mechanism": name, "metric": key, "value": summary[name][key]}
                                      for seed, summary in zip(seeds, summaries)
                                      for name in mechanisms for key in metrics])
        spread = {(name, key): _spread(values[name, key]) for name in mechanisms for key in metrics}
        write_csv(out / "summary.csv", [{"mechanism": name, "metric": key, **row}
                                        for (name, key), row in spread.items()])
        write_csv(out / "warnings.csv", [{"seed": seed, "run": folder.name, "warning": warning}
                                         for seed, folder, said in zip(seeds, folders, warnings) for warning in said],
                  fieldnames=["seed", "run", "warning"])
        plots.seed_spread(values, mechanisms, out / "figures" / "seed_spread.png")
        _write_report(out, first["name"], seeds, folders, mechanisms, values, warnings)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out, spread


def _config(folder: Path) -> dict:
    if not (folder / "config.toml").is_file():
        raise ValueError(f"{folder}: no config.toml there; allowed is a run folder")
    try:
        return config_module.load(folder / "config.toml")
    except config_module.ConfigError as error:
        raise ValueError(f"{folder}: {error}") from None


def _check_one_experiment(folders: list[Path], configs: list[dict], manifests: list[dict]) -> None:
    """ValueError at the first key in which a run's config differs from the first run's
    (other than those of :data:`IGNORED`), at a run whose population.csv held other bytes
    than the first run's that keeps their sha256 (``manifests``; a manifest written before
    it was kept has none), or at a seed given twice."""
    reference = configs[0]
    for folder, config in zip(folders[1:], configs[1:]):
        differs = config_module.first_difference(reference, config, IGNORED)
        if differs:
            section, key = differs.split(".")
            resume = ""
            if differs in config_module.LOOP_KEYS:  # one seed resumed with another loop.max_iterations, say
                value = max(c[section][key] for c in configs) if differs == "loop.max_iterations" else "<value>"
                resume = (f" (resume every seed's run with the same {differs}: python run_experiment.py --resume "
                          f"<run folder> --set {differs}={value}; a run whose loop has settled within the "
                          "loop.tolerance it resumes with only rewrites its report)")
            raise ValueError(f"{folder}: {differs}={config[section][key]!r} differs from "
                             f"{reference[section][key]!r} in {folders[0]}; allowed is runs of one config "
                             f"that differ only in experiment.seed{resume}")
    kept = [(folder, manifest["population_csv_sha256"]) for folder, manifest in zip(folders, manifests)
            if manifest.get("population_csv_sha256") is not None]
    for folder, digest in kept[1:]:
        if digest != kept[0][1]:
            raise ValueError(f"{folder}: population.csv={reference['population']['csv']!r} held other bytes than "
                             f"for {kept[0][0]} (their manifest.json's population_csv_sha256 differ); allowed is "
                             "runs of one config that differ only in experiment.seed, their agents read from the "
                             "same file")
    seeds = [config["experiment"]["seed"] for config in configs]
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ValueError(f"experiment.seed={repeated[0]!r} in {seeds.count(repeated[0])} of the folders: "
                         "allowed is each seed once")


def _summary(folder: Path) -> dict[str, dict[str, float]]:
    """{mechanism: {metric: value}} from a run's summary.csv (True/False as 1/0); ValueError
    naming the folder and the line or column unless it has a line per mechanism, each with
    its header's fields, and a column for the mechanism and every metric of
    :data:`~analysis.report.HEADLINE`."""
    path = folder / "summary.csv"
    if not path.is_file():
        raise ValueError(f"{folder}: no summary.csv there; allowed is a finished run folder")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            lines = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:  # not UTF-8 text, a field past csv's size limit
        raise ValueError(f"{folder}: {_unreadable(error)}") from None
    for line, row in lines:  # a line cut short has None for its missing fields, one too long a key None
        if None in row or None in row.values():
            raise ValueError(f"{folder}: its summary.csv's line {line} has {'more' if None in row else 'fewer'} "
                             "fields than its header (edited by hand or cut short); allowed is the summary.csv "
                             "its run wrote")
    if not lines:
        raise ValueError(f"{folder}: its summary.csv has no mechanism; allowed is the summary.csv its run wrote")
    missing = [key for key in ("mechanism", *(key for key, _, _ in HEADLINE)) if key not in reader.fieldnames]
    if missing:
        raise ValueError(f"{folder}: its summary.csv has no column {missing[0]!r}; allowed is the summary.csv its "
                         "run wrote, with the mechanism and every headline metric")
    try:
        return {row.pop("mechanism"): {key: _number(text) for key, text in row.items()} for _, row in lines}
    except ValueError as error:  # a cell edited by hand
        raise ValueError(f"{folder}: {_unreadable(error)}") from None


def _unreadable(error: Exception) -> str:
    """Why a summary.csv cannot be read, and what is allowed."""
    return f"its summary.csv cannot be read ({type(error).__name__}: {error}); allowed is the summary.csv its run wrote"


def read_warnings(folder: str | Path) -> list[str]:
    """The warnings of a finished run (its manifest.json's: :func:`_manifest`)."""
    return _warnings(_manifest(Path(folder)))


def _warnings(manifest: dict) -> list[str]:
    """The warnings a run's manifest keeps."""
    return list(manifest.get("warnings", []))


def _manifest(folder: Path) -> dict:
    """A finished run's manifest.json, which its report writes last (and a --resume
    removes before it rewrites the folder's config.toml); ValueError naming the folder
    when there is none, cannot be read, or keeps warnings that are not a list of strings."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{folder}: no manifest.json there, so its run (or a --resume of it) has not finished; "
                         "allowed is a finished run folder (python run_experiment.py --resume <run folder> "
                         "finishes it)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"{folder}: its manifest.json cannot be read ({error}); allowed is the manifest its run "
                         "wrote") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{folder}: its manifest.json holds no object; allowed is the manifest its run wrote")
    said = manifest.get("warnings", [])
    if not (isinstance(said, list) and all(isinstance(warning, str) for warning in said)):
        raise ValueError(f"{folder}: its manifest.json's warnings={said!r}: allowed is a list of strings, as in the "
                         "manifest its run wrote")
    return manifest


def _number(text: str) -> float:
    """A summary.csv cell as a number: True and False as 1 and 0, an empty cell as NaN."""
    if text in ("True", "False"):
        return float(text == "True")
    return float(text) if text else float("nan")


def _spread(values: np.ndarray) -> dict[str, float]:
    """n, mean, std (ddof = 1), ci95 and the range over the seeds where the value is a
    number. ci95 is the half-width of the 95% confidence interval of the mean, Student's
    t_{0.975, n-1} std / sqrt(n) (seeds as independent draws). std and ci95 are NaN for
    one seed or with an infinite value (a price of anarchy of inf)."""
    present = values[~np.isnan(values)]
    if present.size == 0:
        return {"n": 0, "mean": np.nan, "std": np.nan, "ci95": np.nan, "min": np.nan, "max": np.nan}
    n = present.size
    std = float(np.std(present, ddof=1)) if n > 1 and np.all(np.isfinite(present)) else np.nan
    ci95 = float(special.stdtrit(n - 1, 0.975) * std / np.sqrt(n)) if not np.isnan(std) else np.nan
    return {"n": int(n), "mean": float(present.mean()), "std": std, "ci95": ci95,
            "min": float(present.min()), "max": float(present.max())}


def _cell(values: np.ndarray, fmt: str) -> str:
    """mean +/- std in the headline's format ("-" without a value, k/n for a yes/no), with
    "(k of n seeds)" where only k of the n seeds have a value, and "(inf in k of n seeds)"
    where the mean is infinite but not every seed's value is (a price of anarchy of inf in
    one seed read "inf", as in all)."""
    spread = _spread(values)
    if spread["n"] == 0:
        return "-"
    if fmt == "{}":
        return f"{int(np.sum(values == 1.0))}/{values.size}"
    cell = mean_and_spread(spread, "{:.1f}" if fmt == "{:d}" else fmt)
    infinite = int(np.count_nonzero(np.isinf(values)))
    if 0 < infinite < spread["n"]:
        cell += f" (inf in {infinite} of {spread['n']} seeds)"
    return cell if spread["n"] == values.size else f"{cell} ({spread['n']} of {values.size} seeds)"


def mean_and_spread(spread: dict[str, float], number: str, sign: str = "±") -> str:
    """"mean ± std" of a :func:`_spread` in the format ``number``, each as
    :func:`~analysis.report.headline_text` writes it (a std of 1e-5 beside a mean of 2e-5
    read "0.0000"); the std left out where it is NaN: one seed, or an infinite value."""
    mean = headline_text(number, spread["mean"])
    return mean if np.isnan(spread["std"]) else f"{mean} {sign} {headline_text(number, spread['std'])}"


def _href(path: Path, start: Path) -> str:
    """The relative URL of ``path`` from the folder ``start``: its relative path with '/'
    between the parts and each part URL-quoted, so that a '#', '%' or '?' in a folder's
    name is a character of the name, not a fragment, an escape or a query."""
    return quote(Path(os.path.relpath(path, start)).as_posix())


def _write_report(out: Path, name: str, seeds: list[int], folders: list[Path], mechanisms: list[str],
                  values: dict[tuple[str, str], np.ndarray], warnings: list[list[str]]) -> None:
    rows = [{"metric": label, **{m: _cell(values[m, key], fmt) for m in mechanisms}}
            for key, label, fmt in HEADLINE]
    reference = mechanisms[0]
    paired = []
    for other in mechanisms[1:]:
        difference = values[other, "welfare_realised"] - values[reference, "welfare_realised"]
        spread = _spread(difference)
        interval = ("-" if np.isnan(spread["ci95"]) else
                    f"[{spread['mean'] - spread['ci95']:.4g}, {spread['mean'] + spread['ci95']:.4g}]")
        paired.append({"mechanism": other, "mean difference": spread["mean"],
                       "std": "-" if np.isnan(spread["std"]) else spread["std"],
                       "95% interval of the mean": interval,
                       f"higher than {reference} in": f"{int(np.sum(difference > 0))} of {len(seeds)} seeds"})
    links = "".join(f'<li>seed {seed}: <a href="{html.escape(_href(folder / "report.html", out))}">'
                    f"{html.escape(folder.name)}</a></li>" for seed, folder in zip(seeds, folders))
    said = "".join(f'<p class="warning">Warning: seed {seed}: {html.escape(warning)}</p>'
                   for seed, seed_warnings in zip(seeds, warnings) for warning in seed_warnings)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(name)}: seeds</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(name)}: {len(seeds)} seed(s)</h1>
{said}
<p>Each seed draws the population and trains anew; cells are the mean &plusmn; the standard deviation over
the seeds (sample, ddof = 1), a yes/no the number of seeds where it holds. A paired difference whose 95%
interval excludes 0 outlasts a change of seed.</p>
<h2>Headline</h2>{html_table(rows)}
<img src="figures/seed_spread.png" alt="seed_spread">
{f"<h2>Realised welfare minus {html.escape(reference)}'s, seed by seed</h2>{html_table(paired)}" if paired else ""}
<h2>Seeds</h2><ul>{links}</ul>
</body></html>"""
    write_whole(out / "report.html", page.encode("utf-8"))
