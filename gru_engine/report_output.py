"""The output of ``gru-engine report`` (:mod:`gru_engine.report`): ``REPORT.md`` tables and notes
and the PNG plots (matplotlib, the optional ``[report]`` extra), from the cached cells."""
from __future__ import annotations

import logging
import os


logger = logging.getLogger("gru_engine")

#: Published figures on the SAME split and protocol (Recall@20, MRR@20 in %, source).
PUBLISHED = {
    ("yoochoose-1-64", "POP"): (6.71, 1.65, "SR-GNN paper"), ("diginetica", "POP"): (0.89, 0.20, "SR-GNN paper"),
    ("yoochoose-1-64", "S-POP"): (30.44, 18.35, "SR-GNN paper"), ("diginetica", "S-POP"): (21.06, 13.68, "SR-GNN paper"),
    ("yoochoose-1-64", "Item-KNN"): (51.60, 21.81, "SR-GNN paper"), ("diginetica", "Item-KNN"): (35.75, 11.57, "SR-GNN paper"),
    ("yoochoose-1-64", "BPR-MF"): (31.31, 12.08, "SR-GNN paper"), ("diginetica", "BPR-MF"): (5.24, 1.98, "SR-GNN paper"),
    ("rsc15-100k", "GRU4Rec"): (65.50, 34.53, "official GRU4Rec"), ("retailrocket", "GRU4Rec"): (60.43, 29.97, "official GRU4Rec"),
    ("yoochoose-1-64", "GRU4Rec"): (68.67, 30.47, "official GRU4Rec"), ("diginetica", "GRU4Rec"): (54.32, 18.31, "official GRU4Rec"),
}


def _plots(results, throughput, fig_dir, stem) -> dict:
    """PNG files by kind -> list of paths; {} without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("report: matplotlib is not installed (pip install gru_engine[report]); "
                       "no plots")
        return {}
    os.makedirs(fig_dir, exist_ok=True)
    paths = {"position": {}, "epoch": {}, "throughput": None}
    for dataset, cells in results.items():
        fig, ax = plt.subplots(figsize=(8, 4))
        for name, r in cells.items():
            pos = r["by_position"]
            if pos:
                ax.plot(range(1, len(pos) + 1), [p["recall@20"] for p in pos], marker=".", label=name)
                ax.set_xticks(range(1, len(pos) + 1), [str(p["position"]) for p in pos], fontsize=7)
        ax.set(xlabel="position of the prediction in the session (clicks seen)", ylabel="Recall@20",
               title=f"{dataset}: Recall@20 by position")
        ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
        fig.tight_layout()
        paths["position"][dataset] = os.path.join(fig_dir, f"{stem}_{dataset}_by_position.png")
        fig.savefig(paths["position"][dataset], dpi=90)
        plt.close(fig)
        gru = {n: r["epochs"] for n, r in cells.items() if r["epochs"] and "recall@20" in r["epochs"][0]}
        if gru:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for name, eps in gru.items():
                ax.plot([e["epoch"] for e in eps], [e["recall@20"] for e in eps], marker="o", label=name)
            ax.set(xlabel="epoch", ylabel="Recall@20 (test)", title=f"{dataset}: Recall@20 by epoch")
            ax.legend(fontsize=8)
            fig.tight_layout()
            paths["epoch"][dataset] = os.path.join(fig_dir, f"{stem}_{dataset}_by_epoch.png")
            fig.savefig(paths["epoch"][dataset], dpi=90)
            plt.close(fig)
    if throughput:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        hs = [t["hidden"] for t in throughput]
        ax.plot(hs, [t["train_events_per_s"] for t in throughput], marker="o", label="training events/s")
        ax.plot(hs, [t["predictions_per_s"] for t in throughput], marker="s", label="evaluation predictions/s")
        ax.set(xscale="log", yscale="log", xlabel="hidden size", ylabel="per second",
               title=f"SessionGRU throughput ({throughput[0]['dataset']})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths["throughput"] = os.path.join(fig_dir, f"{stem}_throughput.png")
        fig.savefig(paths["throughput"], dpi=90)
        plt.close(fig)
    return paths


def _notes(results, max_epochs=None) -> list:
    """What the published figures are (and are not) comparable with; kNN scoring speed."""
    L = ["## Notes", ""]
    if max_epochs:
        L.append(f"- The GRU models were trained for at most {max_epochs} epochs (the official "
                 "rows: 10, rsc15: 3): the gap of GRU4Rec to its published figures is partly "
                 "this cap; Recall@20 by epoch shows where the curve stood when it stopped.")
    L += [
         "- Published figures are quoted only where the split and protocol are the same: the "
         "SR-GNN paper (Wu et al., AAAI 2019, Table 2; SR-GNN's own yoochoose-1-64 and "
         "diginetica splits, the files in ../shared/data) for POP, S-POP, Item-KNN and BPR-MF, "
         "and the official GRU4Rec release run on these very files "
         "(../shared/GRU4REC-REFERENCE.md, full epochs). SKNN, V-SKNN, STAN, VSTAN and SLIST "
         "were published (Ludewig et al., RecSys 2019 and UMUAI 2021; Choi et al., WWW 2021) on "
         "session-rec's own time-window splits of the raw data, with their own candidate "
         "filtering: not comparable with these files, so not quoted. Garg et al. (STAN, SIGIR "
         "2019) used the SR-GNN splits, but their table was not available to this report: no "
         "figure is quoted rather than one from memory.",
         "- Time columns: yoochoose-1-64, diginetica and retailrocket train have an ORDINAL "
         "`Time` (an event counter), yoochoose-category Day*1000 + position, amazon-* the "
         "position in the user's history. The kNN models' 'most recent sessions' follow that "
         "order (on amazon-* it is the sequence length, not recency), and STAN/VSTAN's "
         "`lambda_snh` and SLIST's `session_weight`, time constants in days, read it as "
         "seconds: on those datasets they are not the papers' time decays.",
         "- Where a cap skipped GRU4Rec, the project's own SessionGRU runs with the official "
         "rows and epochs are in bench/RESULTS.md (section 'SessionGRU on CPU: accuracy').",
         "- amazon-*: leave-last-out over user histories (one prediction per user), not "
         "anonymous sessions; every click is still fed to the models (and scored), only the "
         "last one is ranked."]
    knn = []
    for dataset, cells in results.items():
        rows = [(n, cells[n]) for n in ("SKNN", "V-SKNN", "STAN", "VSTAN") if n in cells]
        if rows:
            knn.append(f"{dataset}: " + ", ".join(
                f"{n} {r['eval_s']:.1f} s ({r['predictions_per_s']:,.0f}/s)" for n, r in rows))
    if knn:
        L.append("- kNN scoring speed (evaluation wall time for all the dataset's predictions, "
                 "2 Numba threads): " + "; ".join(knn) + ".")
    return L + [""]


def write_report(path, results, throughput, meta, protocols) -> None:
    """``path`` (Markdown) and its PNGs in ``<dir of path>/figures``."""
    out_dir = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    plots = _plots(results, throughput, os.path.join(out_dir, "figures"), stem)
    rel = lambda p: os.path.relpath(p, out_dir)
    L = ["# Model comparison report", "",
         f"Generated {meta['date']} by `{meta['command']}` on {meta['machine']}.", "",
         "Protocol: every model ranks its prediction against ALL training items, conservative "
         "ties (ties count against the model), test events on items unknown to training removed "
         "first (GRU4Rec protocol, `gru_engine.evaluation.evaluate_sessions`). Fit time and "
         "predictions/s are wall-clock on this machine; when other jobs share its cores they "
         "are pessimistic (accuracy is unaffected). Peak memory: peak RSS of the process "
         "during the cell (fit + evaluation; the datasets already loaded count), and in "
         "brackets its increase over the RSS before the cell.", "",
         "**Caps used in this run:** " + meta["caps"], ""]
    winners = []
    for dataset, cells in results.items():
        L += [f"## {dataset}", "", f"{protocols[dataset]}.", ""]
        L += ["| model | R@5 | R@10 | R@20 | MRR@5 | MRR@10 | MRR@20 | published R@20 / MRR@20 (%) | fit s | eval s | predictions/s | peak MB (+) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        best = max(cells.values(), key=lambda r: r["recall@20"]) if cells else None
        best_mrr = max(cells.values(), key=lambda r: r["mrr@20"]) if cells else None
        for name, r in cells.items():
            pub = PUBLISHED.get((dataset, name))
            pub_s = f"{pub[0]:.2f} / {pub[1]:.2f} ({pub[2]})" if pub else ""
            mark = lambda key, b: f"**{r[key]:.4f}**" if r is b else f"{r[key]:.4f}"
            L.append(f"| {name} | {r['recall@5']:.4f} | {r['recall@10']:.4f} | {mark('recall@20', best)} "
                     f"| {r['mrr@5']:.4f} | {r['mrr@10']:.4f} | {mark('mrr@20', best_mrr)} | {pub_s} "
                     f"| {r['fit_s']:.1f} | {r['eval_s']:.1f} | {r['predictions_per_s']:,.0f} | {r['peak_rss_mb']:.0f} "
                     f"(+{r['rss_increase_mb']:.0f}) |")
        if cells:
            any_r = next(iter(cells.values()))
            L += ["", f"{any_r['n_events']:,} predictions, {any_r['n_items']:,} items, "
                      f"{any_r['n_unknown_item_events']:,} test events on unknown items removed."]
            gru = {n: r for n, r in cells.items() if r["epochs"]}
            for n, r in gru.items():
                eps = r["epochs"]
                if "recall@20" in eps[0]:
                    L.append(f"{n} Recall@20 by epoch: " + ", ".join(f"{e['recall@20']:.4f}" for e in eps) + ".")
            missing = meta.get("skipped_models", {}).get(dataset, [])
            winners.append(f"- **{dataset}**: Recall@20 {best['model']} ({best['recall@20']:.4f}), "
                           f"MRR@20 {best_mrr['model']} ({best_mrr['mrr@20']:.4f})"
                           + (f" — among the models run ({', '.join(missing)} skipped by a cap)"
                              if missing else "") + ".")
        for kind in ("position", "epoch"):
            if plots and dataset in plots[kind]:
                L += ["", f"![{dataset} {kind}]({rel(plots[kind][dataset])})"]
        L.append("")
    L += ["## Which model wins where", ""] + winners + [""] + _notes(results, meta.get("max_epochs"))
    if throughput:
        L += ["## SessionGRU throughput against the hidden size", "",
              f"Dataset {throughput[0]['dataset']}, its GRU parameter row with `layers=H`, one epoch.", "",
              "| hidden | training events/s | evaluation predictions/s | Recall@20 after 1 epoch |",
              "|---|---|---|---|"]
        L += [f"| {t['hidden']} | {t['train_events_per_s']:,.0f} | {t['predictions_per_s']:,.0f} | "
              f"{t['recall@20']:.4f} |" for t in throughput]
        if plots and plots.get("throughput"):
            L += ["", f"![throughput]({rel(plots['throughput'])})"]
        L.append("")
    L += ["## Parameters", "", "SessionGRU: " + "; ".join(
        f"{d}: {meta['gru_source'][d]}" for d in results if d in meta["gru_source"]) + ". "
          "GRU4Rec+features: FeatureSessionGRU, ID + feature subnets of 64 units, concat, "
          "alternating strategy, 4 epochs, n_sample 512, learning rate 0.1 (the best variant of "
          "bench/RESULTS.md's feature study). Every other model: its defaults "
          "(`gru_engine.baselines`, `gru_engine.neighbors`, `gru_engine.slist`).", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(L))
