"""A newcomer's first commands (issue 17, item 9): the README's recommend example uses ids of
the bundled sample, -q/-v work after the subcommand, ``train --help`` lists the parameter names,
the top-level help has no reStructuredText markup, ``preprocess`` prints its statistics once."""
import logging
import os
import re

import numpy as np
import pytest

from gru_engine import cli
from gru_engine.params import DEFAULTS

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def test_readme_recommend_examples_use_ids_of_the_bundled_sample():
    from gru_engine.sample_data import load_sample
    train, _ = load_sample()
    known = set(np.unique(train["ItemId"]).tolist())
    text = open(README).read()
    lines = re.findall(r"gru-engine recommend model\.npz ([\d ]+)", text)
    calls = re.findall(r"\.recommend\(\[([\d, ]+)\]", text)
    assert lines and calls
    for ids in [l.split() for l in lines] + [c.split(",") for c in calls]:
        assert all(int(i) in known for i in ids), ids


@pytest.mark.parametrize("argv, quiet, verbose", [
    (["recommend", "m.npz", "1"], False, False),
    (["-q", "recommend", "m.npz", "1"], True, False),
    (["recommend", "m.npz", "1", "-q"], True, False),
    (["recommend", "-v", "m.npz", "1"], False, True),
    (["train", "x.tsv", "--quiet"], True, False),
    (["preprocess", "rsc15", "a", "b", "--verbose"], False, True),
])
def test_quiet_and_verbose_before_or_after_the_subcommand(argv, quiet, verbose):
    args = cli.build_parser().parse_args(argv)
    assert (args.quiet, args.verbose) == (quiet, verbose)


def test_help_texts(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(f"{name}=" in out for name in DEFAULTS), out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "`" not in capsys.readouterr().out


def _raw_yoochoose(path, n_sessions=400, n_items=12, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for s in range(n_sessions):
            day, hour = 1 + s * 5 // n_sessions, int(rng.integers(0, 20))
            for k in range(3):
                item = 214500000 + int(rng.integers(0, n_items))
                f.write(f"{s + 1},2014-04-0{day}T{hour:02d}:{k:02d}:00.000Z,{item},0\n")


def test_preprocess_prints_its_statistics_once(tmp_path, capsys, caplog):
    raw = tmp_path / "yoochoose-clicks.dat"
    _raw_yoochoose(raw)
    with caplog.at_level(logging.INFO, logger="gru_engine"):
        assert cli.main(["preprocess", "rsc15", str(raw), str(tmp_path / "out")]) == 0
    out = capsys.readouterr()
    stat_lines = [l for l in out.out.splitlines() if ": {" in l]
    assert len(stat_lines) >= 3  # one line per step
    steps = [l.split(":")[0] for l in stat_lines]
    assert len(set(steps)) == len(steps)
    logged = [r.getMessage() for r in caplog.records]
    assert not any(any(step in m for step in steps) and "events" in m for m in logged), logged
    assert not any(step in out.err for step in steps)
