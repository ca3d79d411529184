"""One measurement of :mod:`compare_commits` (run with the checkout under test first on
``sys.path``): trains and evaluates one configuration and writes its parameters, metrics and
speed. Works with releases before and after the one-network core (model file format 3): the
parameters are written in a canonical form (SessionGRU: per-layer ``Wx_l``/``bx_l``/``Wh_l``/
``bhn_l``, ``E``, ``Wy``, ``By``; FeatureSessionGRU: the flat ``theta``/``T``/``Wy``/``By``).

    python bench/refactor_job.py JOB OUT.npz [--data DIR] [--threads N]

JOB: ``gru-rsc15`` (official rsc15 parameters, 3 epochs), ``gru-yoo480`` (yoochoose-1-64,
official hidden-480 row, 1 epoch), ``feat-beauty-<strategy>`` (amazon-beauty, parallel concat,
4 epochs, as bench/bench_features.py loads it), ``cuda-gru`` / ``cuda-feat`` (the CUDA backend
in the CPU emulator, its checks off: SessionGRU / FeatureSessionGRU, hidden 32, 1 epoch on
generated data; the training figure is steps per second of the emulated step).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

RSC15 = ("loss=cross-entropy,constrained_embedding=True,embedding=0,elu_param=0,layers=100,"
         "n_epochs=3,batch_size=32,dropout_p_embed=0.0,dropout_p_hidden=0.4,learning_rate=0.2,"
         "momentum=0.2,n_sample=2048,sample_alpha=0.5,bpreg=0.0,logq=1.0")
YOO480 = ("loss=cross-entropy,constrained_embedding=True,embedding=0,elu_param=0,layers=480,"
          "n_epochs=1,batch_size=48,dropout_p_embed=0.0,dropout_p_hidden=0.2,learning_rate=0.07,"
          "momentum=0.0,n_sample=2048,sample_alpha=0.2,bpreg=0.0,logq=1.0")


def canonical(model) -> dict:
    p = model.params_
    if "theta" in p and type(model).__name__ == "FeatureSessionGRU":
        return {k: np.asarray(p[k]) for k in ("theta", "T", "Wy", "By")}
    if "theta" in p:  # one-network SessionGRU: per-layer views of the ID subnet
        sub = model.subnet_params("id")
        out = {}
        for l in range(len(sub["Wh"])):
            wx = sub["Wx"][l] if sub["Wx"][l] is not None else sub["table"]
            out.update({f"Wx_{l}": wx, f"bx_{l}": sub["bx"][l], f"Wh_{l}": sub["Wh"][l],
                        f"bhn_{l}": sub["bhn"][l]})
        if sub["table"] is not None and sub["Wx"][0] is not None:
            out["E"] = sub["table"]
    else:
        out = {}
        for l in range(len(p["Wh"])):
            out.update({f"{k}_{l}": p[k][l] for k in ("Wx", "bx", "Wh", "bhn")})
        if "E" in p:
            out["E"] = p["E"]
    out["Wy"], out["By"] = p["Wy"], p["By"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("job")
    ap.add_argument("out")
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-repeats", type=int, default=2)
    a = ap.parse_args(argv)
    from gru_engine import SessionGRU
    from gru_engine.data import read_events
    result = {"job": a.job}
    if a.job.startswith("cuda-"):
        os.environ["GRU_ENGINE_CUDA_EMU_CHECKS"] = "off"
        import gru_engine.model as model_mod
        try:
            from gru_engine.backends.emulator import EmulatedDevice
        except ImportError:  # releases before the emulator had its own module
            from gru_engine.backends.device import EmulatedDevice
        device = EmulatedDevice()
        model_mod._resolve_device = lambda name: None if name == "cpu" else device
        rng = np.random.default_rng(0)
        n = 6000
        events = {"SessionId": np.repeat(np.arange(n // 6), 6),
                  "ItemId": rng.integers(0, 300, n), "Time": np.arange(n, dtype=np.float64)}
        kw = dict(layers=[32], n_epochs=1, batch_size=32, n_sample=128, random_state=1,
                  device="cuda", dropout_p_hidden=0.0)
        if a.job == "cuda-gru":
            model = SessionGRU(**kw).fit(events)
        else:
            from gru_engine import FeatureSessionGRU
            from gru_engine.features import CategoricalFeatures
            ids = np.arange(300)
            feats = {"cat": CategoricalFeatures(ids, [[i % 7, 10 + i % 5] for i in ids],
                                                dim=8)}
            model = FeatureSessionGRU(**kw).fit(events, item_features=feats)
        test = events
        evaluate = lambda: model.evaluate(test, cutoffs=(5, 10, 20), by_position=False)
    elif a.job.startswith("gru-"):
        if a.job == "gru-rsc15":
            d = os.path.join(a.data, "rsc15-100k")
            train = read_events(os.path.join(d, "rsc15_100k_train_full.tsv.gz"))
            test = read_events(os.path.join(d, "rsc15_100k_test.tsv.gz"))
            text = RSC15
        else:
            d = os.path.join(a.data, "yoochoose-1-64")
            train = read_events(os.path.join(d, "yoochoose1_64_train.tsv.gz"))
            test = read_events(os.path.join(d, "yoochoose1_64_test.tsv.gz"))
            text = YOO480
        model = SessionGRU.from_param_string(text, random_state=1, n_threads=a.threads)
        model.fit(train)
        evaluate = lambda: model.evaluate(test, cutoffs=(5, 10, 20), by_position=False)
        targets = "all"
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bench_features
        from gru_engine import FeatureSessionGRU
        strategy = a.job.rsplit("-", 1)[1]
        ds = bench_features.load(a.data, "amazon-beauty")
        model = FeatureSessionGRU(layers=[64], n_epochs=4, batch_size=32, n_sample=512,
                                  learning_rate=0.1, architecture="parallel", combine="concat",
                                  strategy=strategy, random_state=1, n_threads=a.threads)
        model.fit(ds["train"], item_features=ds["features"])
        test, targets = ds["test"], ds["targets"]
        evaluate = lambda: model.evaluate(test, cutoffs=(5, 10, 20), by_position=False,
                                          targets=targets)
    times = []
    for _ in range(max(1, a.eval_repeats)):
        t0 = time.perf_counter()
        metrics = evaluate()
        times.append(time.perf_counter() - t0)
    result["metrics"] = {k: float(v) for k, v in metrics.items() if k.startswith(("recall",
                                                                                  "mrr"))}
    result["n_predictions"] = int(metrics["n_events"])
    result["train_events_per_s"] = [float(x) for x in model.events_per_s_]
    result["eval_seconds"] = times
    result["loss_history"] = [float(x) for x in model.loss_history_]
    np.savez(a.out, **canonical(model))
    with open(a.out + ".json", "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
