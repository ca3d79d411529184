"""The same search serially and on a local Ray cluster: same seeds, same trials, same best.

    python bench/bench_tune.py [--data ../shared/data/rsc15-100k] [--trials 20] [--epochs 1]

Runs ``gru_engine.tune.search`` and then ``gru_engine.distributed.ray_search`` (a Ray instance
started here with ``--cpus`` CPUs, one trial per CPU, 1 thread per trial) over the official
``--space`` with the random sampler, seed ``--seed``, no pruning (pruning decisions depend on
the order in which trials finish, which differs with parallel trials), ``n_epochs=--epochs``
per trial, on train_tr -> train_valid. Prints both best trials and values and whether every
trial's parameters and value agree; writes ``bench/out/tune/compare.json``.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "rsc15-100k"))
    ap.add_argument("--space", default="cross-entropy")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--metric", default="mrr@20")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "out", "tune"))
    args = ap.parse_args()
    from gru_engine import tune
    from gru_engine.data import read_events
    train = read_events(os.path.join(args.data, "rsc15_100k_train_tr.tsv.gz"))
    valid = read_events(os.path.join(args.data, "rsc15_100k_train_valid.tsv.gz"))
    space = tune.load_space(args.space)

    def settings():
        return tune.TrialSettings(metric=args.metric, seed=args.seed, n_threads=1,
                                  overrides={"n_epochs": args.epochs})

    res = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "loadavg_before": os.getloadavg()}
    t0 = time.perf_counter()
    serial = tune.search(train, valid, space, n_trials=args.trials, settings=settings(),
                         sampler="random", pruner="none")
    res["serial_seconds"] = time.perf_counter() - t0
    print(f"serial: best trial {serial.best_number} {args.metric} {serial.best_value!r} "
          f"({res['serial_seconds']:.0f} s)", flush=True)
    import ray
    from gru_engine import distributed
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    on_ray = distributed.ray_search(train, valid, space, n_trials=args.trials,
                                    settings=settings(), sampler="random", pruner="none",
                                    ray_storage=os.path.abspath(os.path.join(args.out, "ray")))
    res["ray_seconds"] = time.perf_counter() - t0
    print(f"ray:    best trial {on_ray.best_number} {args.metric} {on_ray.best_value!r} "
          f"({res['ray_seconds']:.0f} s)", flush=True)
    same = [a.params == b.params and a.value == b.value
            for a, b in zip(serial.trials, on_ray.trials)]
    res.update(serial=serial.to_json(), ray=on_ray.to_json(),
               same_best=(serial.best_number, serial.best_value) == (on_ray.best_number,
                                                                       on_ray.best_value),
               trials_identical=sum(same), n_trials=(len(serial.trials), len(on_ray.trials)),
               loadavg_after=os.getloadavg())
    print(f"same best: {res['same_best']}; identical trials (params and value): "
          f"{sum(same)} of {len(same)}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
