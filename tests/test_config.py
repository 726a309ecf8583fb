"""Config validation: defaults, overrides, and one clear error per bad key or value."""

import json

import pytest

from analysis import config as config_module
from analysis.config import ConfigError

ROOT = config_module.Path(__file__).resolve().parents[1]


def test_shipped_configs_validate():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        resolved = config_module.load(path)
        assert set(resolved) == set(config_module.SCHEMA), path


def test_override_parses_toml_values_and_bare_strings():
    resolved = config_module.load(None, ["training.rounds=7", "data.dataset=mnist",
                                         "accuracy.pilot_sizes=[10, 20, 40]", "training.lr=0.1"])
    assert resolved["training"]["rounds"] == 7
    assert resolved["data"]["dataset"] == "mnist"
    assert resolved["accuracy"]["pilot_sizes"] == [10, 20, 40]
    assert resolved["training"]["lr"] == 0.1
    assert config_module.load(None, ["model.hidden=[]"])["model"]["hidden"] == []  # logistic regression


def test_override_sets_one_entry_of_a_table():
    """population.cost.sigma=1.0 changes the sigma of the cost distribution, keeping its
    other entries, whether the table comes from the config or from the defaults."""
    default = config_module.defaults()["population"]["cost"]
    resolved = config_module.load(None, ["population.cost.sigma=1.0"])
    assert resolved["population"]["cost"] == {**default, "sigma": 1.0}
    resolved = config_module.load(ROOT / "configs" / "default.toml", ["population.cost.mean=-7"])
    assert resolved["population"]["cost"] == {"dist": "lognormal", "mean": -7, "sigma": 0.5}


@pytest.mark.parametrize("override, fragment", [
    ("training.rounds=-1", "training.rounds=-1: allowed is a finite number > 0"),
    ("training.roundz=3", "training.roundz: unknown key; allowed is one of rounds"),
    ("trainin.rounds=3", "trainin: unknown section"),
    ("training.lr=true", "training.lr=True: allowed is an integer or a number"),
    ("mechanisms.compare=['nope']", "mechanisms.compare=['nope']: allowed is a non-empty list"),
    ("population.cost={dist='zipf'}", "population.cost={'dist': 'zipf'}: allowed is a table whose 'dist'"),
    ("accuracy.family='spline'", "accuracy.family='spline': allowed is one of 'power_law'"),
    ("population.outside_option=alone", "population.outside_option='alone': allowed is 'train_alone' (an agent "
     "that stays out trains alone), a number, a list of numbers, or a table with key 'dist'"),
    ("data.validation_fraction=1.5", "data.validation_fraction=1.5: allowed is a number in (0, 1)"),
    ("rounds=3", "allowed is section.key=value"),
    ("mechanisms.shapley_permutations=0", "mechanisms.shapley_permutations=0: allowed is a finite number > 0"),
    ("mechanisms.shapley_eps=-0.1", "mechanisms.shapley_eps=-0.1: allowed is a finite number >= 0"),
    ("mechanisms.shaping_epsilon=inf", "mechanisms.shaping_epsilon=inf: allowed is a finite number >= 0"),
    # at 0 accuracy rewards cost the server nothing and the contract menu is not unique
    ("mechanisms.contract_accuracy_price=0", "mechanisms.contract_accuracy_price=0: allowed is a finite number > 0"),
    ("loop.tolerance=inf", "loop.tolerance=inf: allowed is a finite number > 0"),
    ("training.lr=inf", "training.lr=inf: allowed is a finite number > 0"),
    ("accuracy.pilot_sizes=[40, 40, 80]", "accuracy.pilot_sizes=[40, 40, 80]: allowed is whole numbers >= 1, "
     "at least 3 different ones for family='power_law', one per parameter of its curve"),
    ("accuracy.pilot_sizes=[0.5, 20, 40]", "accuracy.pilot_sizes=[0.5, 20, 40]: allowed is a non-empty list of whole"),
    ("model.hidden=[64.5]", "model.hidden=[64.5]: allowed is a list of whole numbers >= 1 ([] for no hidden "
     "layer: logistic regression)"),
    ("training.lr.low=1", "--set 'training.lr.low=1': training.lr=0.05 is not a table; allowed is training.lr=value"),
    ("population.costs.sigma=1", "population.costs: unknown key; allowed is one of n_agents"),
    ("experiment.name='../x'", "experiment.name='../x': allowed is a non-empty name of printable characters "
     "without '/', '\\' or '..' (the run folder goes inside experiment.output_dir)"),
    ("experiment.name='a/b'", "experiment.name='a/b': allowed is a non-empty name of printable characters"),
    ('experiment.name="a\\\\b"', "experiment.name='a\\\\b': allowed is a non-empty name of printable characters"),
    ("experiment.name=''", "experiment.name='': allowed is a non-empty name"),
    ("experiment.name='..'", "experiment.name='..': allowed is a non-empty name"),
    (f"experiment.name='{'n' * 231}'", f"experiment.name='{'n' * 231}': allowed is a name of at most 230 bytes in "
     "UTF-8 (this one has 231), so that the seeds folder <name>-seeds-YYYYmmdd-HHMMSS-NN fits in a file name of "
     "255 bytes"),
    (f"experiment.name='{'é' * 116}'", "allowed is a name of at most 230 bytes in UTF-8 (this one has 232)"),
    ("experiment.output_dir='~nosuchuser_fedecon/runs'", "experiment.output_dir='~nosuchuser_fedecon/runs': "
     "allowed is a path whose leading '~' names a known user's home folder"),
    ("population.csv='~nosuchuser_fedecon/agents.csv'", "population.csv='~nosuchuser_fedecon/agents.csv': allowed is"),
    ("data.root='~nosuchuser_fedecon'", "data.root='~nosuchuser_fedecon': allowed is a path whose leading '~'"),
])
def test_bad_values_name_key_value_and_allowed(override, fragment):
    with pytest.raises(ConfigError) as error:
        config_module.load(None, [override])
    message = str(error.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        config_module.load(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[training\nrounds = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config_module.load(broken)


def test_resolved_config_round_trips_through_toml(tmp_path):
    resolved = config_module.load(ROOT / "configs" / "default.toml", ["experiment.seed=5"])
    path = tmp_path / "config.toml"
    path.write_text(config_module.dumps(resolved))
    assert config_module.load(path) == resolved


def test_strings_with_quotes_backslashes_and_control_characters_round_trip(tmp_path):
    """A tab in a string was written raw, and the run's config.toml could not be read back."""
    root, name = 'C:\\data\t"quoted"\x7f é', 'say "hi"'
    overrides = [f"data.root={json.dumps(root)}", f"experiment.name={json.dumps(name)}"]  # JSON strings are TOML's
    resolved = config_module.load(None, overrides)
    assert (resolved["data"]["root"], resolved["experiment"]["name"]) == (root, name)
    path = tmp_path / "config.toml"
    path.write_text(config_module.dumps(resolved), encoding="utf-8")
    assert config_module.load(path) == resolved


def test_a_config_that_is_not_utf8_is_one_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("# café\n[training]\nrounds = 3\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not valid TOML, which is UTF-8 \('utf-8' codec can't decode byte 0xe9"):
        config_module.load(path)

