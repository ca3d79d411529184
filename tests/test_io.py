"""Model files (gru_engine/io.py): older formats load with identical scores, round trips, every
malformed file the production issue lists gives ModelFileError naming what is wrong, file modes,
stale temporaries, and the CLI's one-line errors."""
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import gru_engine
from gru_engine import FeatureSessionGRU, SessionGRU
from gru_engine import cli
from gru_engine.exceptions import ModelFileError
from gru_engine.io import array_checksum
from gru_engine.safe_npz import check_writable, remove_stale_temp_files

import model_files as mf

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "models")
FIXTURE_CLASSES = {"gru_v1_constrained": SessionGRU, "gru_v1_onehot": SessionGRU,
                   "gru_v1_embedding": SessionGRU, "feature_v1": FeatureSessionGRU,
                   "feature_v2": FeatureSessionGRU}
CLASSES = {"SessionGRU": SessionGRU, "FeatureSessionGRU": FeatureSessionGRU}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> path of one saved model per configuration of ``model_files.CONFIGS``."""
    return mf.write_models(tmp_path_factory.mktemp("models"))


def _cls(name):
    return CLASSES[mf.CONFIGS[name][0]]


def _rewrite(path, src, tmp_path, change, fix_checksum=True):
    """Write ``src``'s arrays, changed by ``change(arrays, header)`` (in place), to a new file."""
    arrays = mf.read(src)
    header = mf.header_of(arrays)
    change(arrays, header)
    out = tmp_path / path
    mf.write(out, mf.with_header(arrays, header), fix_checksum=fix_checksum)
    return out


# ---- older formats and round trips ------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FIXTURE_CLASSES))
def test_fixture_files_score_exactly_as_when_written(name):
    model = FIXTURE_CLASSES[name].load(os.path.join(FIXTURES, name + ".npz"))
    want = np.load(os.path.join(FIXTURES, name + ".scores.npy"))
    np.testing.assert_array_equal(model.predict_next(mf.SESSIONS), want)


@pytest.mark.parametrize("name", sorted(mf.CONFIGS))
def test_round_trip_scores_identical_and_header_records_version_and_checksum(models, name,
                                                                             tmp_path):
    model = _cls(name).load(models[name])
    again = tmp_path / "again.npz"
    model.save(again)
    np.testing.assert_array_equal(_cls(name).load(again).predict_next(mf.SESSIONS),
                                  model.predict_next(mf.SESSIONS))
    arrays = mf.read(models[name])
    header = mf.header_of(arrays)
    assert header["library_version"] == gru_engine.__version__
    assert header["checksum"] == array_checksum(arrays, header)
    assert header["checksum"].startswith("crc32:")


def test_feature_v1_model_saved_again_keeps_no_encoders(tmp_path):
    model = FeatureSessionGRU.load(os.path.join(FIXTURES, "feature_v1.npz"))
    model.save(tmp_path / "m.npz")
    again = FeatureSessionGRU.load(tmp_path / "m.npz")
    assert again.feature_vocab_ is None
    np.testing.assert_array_equal(again.predict_next(mf.SESSIONS),
                                  np.load(os.path.join(FIXTURES, "feature_v1.scores.npy")))


# ---- the cases of the issue: each a clear ModelFileError naming what is wrong ------------------
def test_onehot_input_mode_on_a_constrained_model(models, tmp_path):
    def change(arrays, header):
        header["input_mode"] = "onehot"
    path = _rewrite("m.npz", models["gru_constrained"], tmp_path, change)
    with pytest.raises(ModelFileError, match="'input_mode' is 'onehot'"):
        SessionGRU.load(path)

    def change_both(arrays, header):  # header made consistent: the layout tables disagree
        header["input_mode"] = "onehot"
        header["params"]["constrained_embedding"] = False
    path = _rewrite("m2.npz", models["gru_constrained"], tmp_path, change_both)
    with pytest.raises(ModelFileError, match="array 'SI' row 0 column S_KIND"):
        SessionGRU.load(path)


@pytest.mark.parametrize("value", [10 ** 6, -1, 2 ** 31 - 1])
def test_feature_bag_indices_out_of_range(models, tmp_path, value):
    def change(arrays, header):
        n = mf.N_ITEMS + 1
        a, b = arrays["indptr"][n], arrays["indptr"][2 * n - 1]  # the second subnet's bags
        arrays["indices"][(a + b) // 2] = value
    path = _rewrite("m.npz", models["feat_parallel"], tmp_path, change)
    with pytest.raises(ModelFileError, match="array 'indices' of subnet 'dense_raw'"):
        FeatureSessionGRU.load(path)


def test_wy_with_fewer_rows_than_item_ids(models, tmp_path):
    def change(arrays, header):
        arrays["Wy"] = arrays["Wy"][:-1]
    path = _rewrite("m.npz", models["gru_constrained"], tmp_path, change)
    with pytest.raises(ModelFileError, match=r"array 'Wy' has shape \(23, 8\), expected \(24, 8\)"):
        SessionGRU.load(path)


def test_unknown_header_parameter_is_an_error_naming_it(models, tmp_path):
    def change(arrays, header):
        header["params"]["attention_heads"] = 4
    for name in ("gru_constrained", "feat_parallel"):
        path = _rewrite(f"{name}.npz", models[name], tmp_path, change)
        with pytest.raises(ModelFileError, match=r"\['attention_heads'\] unknown to gru_engine"):
            _cls(name).load(path)


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    for k, head in enumerate((b"", b"PK\x03\x04", b"\x93NUMPY")):
        path = tmp_path / f"r{k}.npz"
        path.write_bytes(head + rng.bytes(4096))
        with pytest.raises(ModelFileError) as info:
            SessionGRU.load(path)
        assert "allow_pickle" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.7, 0.999])
def test_truncated_file(models, tmp_path, fraction):
    raw = open(models["gru_onehot"], "rb").read()
    path = tmp_path / "t.npz"
    path.write_bytes(raw[:int(len(raw) * fraction)])
    with pytest.raises(ModelFileError, match="empty|truncated|not a gru_engine"):
        SessionGRU.load(path)


def test_empty_missing_and_folder_paths(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"is empty \(0 bytes\)"):
        SessionGRU.load(tmp_path / "empty.npz")
    with pytest.raises(ModelFileError, match="no such model file"):
        SessionGRU.load(tmp_path / "missing.npz")
    with pytest.raises(ModelFileError, match="is a folder"):
        SessionGRU.load(tmp_path)


def test_pickled_member_is_refused(models, tmp_path):
    arrays = mf.read(models["gru_constrained"])
    arrays["item_ids"] = np.array([object()] * mf.N_ITEMS, dtype=object)
    path = tmp_path / "p.npz"
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError, match="'item_ids' holds Python objects"):
        SessionGRU.load(path)


def test_checksum_mismatch_missing_and_newer_version(models, tmp_path):
    def change(arrays, header):
        arrays["By"][3] += 1.0
    path = _rewrite("c.npz", models["gru_constrained"], tmp_path, change, fix_checksum=False)
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        SessionGRU.load(path)

    def header_only(arrays, header):  # valid, but not what was written
        header["keys"]["item_key"] = "ProductId"
    path = _rewrite("h.npz", models["gru_constrained"], tmp_path, header_only,
                    fix_checksum=False)
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        SessionGRU.load(path)

    def drop(arrays, header):
        del header["checksum"]
    path = _rewrite("d.npz", models["gru_constrained"], tmp_path, drop)
    with pytest.raises(ModelFileError, match="'checksum' is missing"):
        SessionGRU.load(path)

    def newer(arrays, header):
        header["format_version"] = 4
        header["library_version"] = "9.0"
    path = _rewrite("n.npz", models["gru_constrained"], tmp_path, newer)
    with pytest.raises(ModelFileError, match=r"newer gru_engine \(9.0\).*upgrade"):
        SessionGRU.load(path)


def test_other_class_nan_duplicate_ids_and_vocabularies(models, tmp_path):
    with pytest.raises(ModelFileError, match="holds a 'FeatureSessionGRU', not a SessionGRU"):
        SessionGRU.load(models["feat_parallel"])

    def nan(arrays, header):
        arrays["theta"][5] = np.nan
    with pytest.raises(ModelFileError, match="array 'theta' holds 1 NaN"):
        SessionGRU.load(_rewrite("nan.npz", models["gru_onehot"], tmp_path, nan))

    def dup(arrays, header):
        arrays["item_ids"][1] = arrays["item_ids"][0]
    with pytest.raises(ModelFileError, match="array 'item_ids': .*unique"):
        SessionGRU.load(_rewrite("dup.npz", models["gru_onehot"], tmp_path, dup))

    def vocab(arrays, header):
        arrays["vocab_1_0"] = arrays["vocab_1_0"][:-1]  # a code column lost one code
    with pytest.raises(ModelFileError, match="feature source 'cat_cols'"):
        FeatureSessionGRU.load(_rewrite("v.npz", models["feat_parallel"], tmp_path, vocab))

    def dtype(arrays, header):
        arrays["indptr"] = arrays["indptr"].astype(np.int32)
    with pytest.raises(ModelFileError, match="array 'indptr' has dtype int32, expected int64"):
        FeatureSessionGRU.load(_rewrite("i.npz", models["feat_sum"], tmp_path, dtype))

    def indptr(arrays, header):
        arrays["indptr"][5] = arrays["indptr"][4] - 1
    with pytest.raises(ModelFileError, match="array 'indptr' must rise"):
        FeatureSessionGRU.load(_rewrite("j.npz", models["feat_sum"], tmp_path, indptr))


def test_legacy_format_1_layer_arrays_are_checked(tmp_path):
    arrays = mf.read(os.path.join(FIXTURES, "gru_v1_onehot.npz"))
    arrays["Wx_0"] = arrays["Wx_0"][:-1]
    np.savez(tmp_path / "l.npz", **arrays)
    with pytest.raises(ModelFileError, match=r"array 'Wx_0' has shape \(23, 24\)"):
        SessionGRU.load(tmp_path / "l.npz")


def test_cli_prints_one_line_and_exits_2(models, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    for path in (bad, tmp_path, tmp_path / "missing.npz"):
        assert cli.main(["recommend", str(path), "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("gru-engine: error:"), err
        assert "Traceback" not in err


# ---- files: modes, stale temporaries, writability ---------------------------------------------
def _saved_mode(model, path):
    model.save(path)
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_file_mode_follows_umask_and_existing_mode_is_kept(models, tmp_path):
    model = SessionGRU.load(models["gru_constrained"])
    old = os.umask(0o022)
    try:
        assert _saved_mode(model, tmp_path / "a.npz") == 0o644
        os.umask(0o077)
        assert _saved_mode(model, tmp_path / "b.npz") == 0o600
        os.chmod(tmp_path / "a.npz", 0o640)
        assert _saved_mode(model, tmp_path / "a.npz") == 0o640
    finally:
        os.umask(old)


def _fake_temp(folder, name, content, age):
    path = folder / name
    path.write_bytes(content)
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_stale_temporaries_of_killed_saves_are_removed_by_the_next_save(models, tmp_path):
    model = SessionGRU.load(models["gru_constrained"])
    model.save(tmp_path / "m.npz")
    partial = open(tmp_path / "m.npz", "rb").read()[:5000]  # what a killed save leaves
    stale = _fake_temp(tmp_path, ".tmp-0123456789abcdef.npz", partial, age=120)
    recent = _fake_temp(tmp_path, ".tmp-recent.npz", partial, age=5)
    foreign = _fake_temp(tmp_path, ".tmp-foreign.npz", b"someone else's data" * 10, age=120)
    other_name = _fake_temp(tmp_path, "notes.tmp-x.npz", partial, age=120)
    locked = _fake_temp(tmp_path, ".tmp-locked.npz", partial, age=120)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"f = open({str(locked)!r}, 'rb'); fcntl.flock(f, fcntl.LOCK_EX)\n"
         "print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.utime(locked, (time.time() - 120,) * 2)
        model.save(tmp_path / "m2.npz")
        assert not stale.exists()
        assert recent.exists() and foreign.exists() and other_name.exists() and locked.exists()
    finally:
        holder.kill()
        holder.wait()
    assert remove_stale_temp_files(tmp_path) == [str(locked)]  # its writer is gone
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == [".tmp-foreign.npz", ".tmp-recent.npz", "m.npz", "m2.npz",
                         "notes.tmp-x.npz"]


def test_unwritable_paths(models, tmp_path):
    model = SessionGRU.load(models["gru_constrained"])
    target = tmp_path / "missing" / "m.npz"
    with pytest.raises(ModelFileError, match="folder .*missing does not exist"):
        check_writable(target)
    with pytest.raises(ModelFileError, match=r"cannot write the model to .*m\.npz") as info:
        model.save(target)
    assert ".tmp-" not in str(info.value)
    with pytest.raises(ModelFileError, match="it is a folder"):
        check_writable(tmp_path)
    check_writable(tmp_path / "ok.npz")
    assert list(tmp_path.iterdir()) == []  # the probe left nothing behind


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_folder_is_not_writable(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ModelFileError, match="Permission denied"):
            check_writable(folder / "m.npz")
    finally:
        folder.chmod(0o755)


def test_cli_train_checks_the_save_path_before_training(tmp_path, capsys, monkeypatch):
    train = tmp_path / "train.tsv"
    ev = mf.events()
    with open(train, "w") as f:
        f.write("SessionId\tItemId\tTime\n")
        for s, i, t in zip(ev["SessionId"], ev["ItemId"], ev["Time"]):
            f.write(f"{s}\t{i}\t{t}\n")

    def no_fit(*args, **kwargs):
        raise AssertionError("trained before checking the save path")
    monkeypatch.setattr(SessionGRU, "fit", no_fit)
    code = cli.main(["-q", "train", str(train), "-s", str(tmp_path / "no" / "m.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err, err
