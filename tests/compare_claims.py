"""Checks every sentence of an ``rnnkit compare`` report against the measurements in its
results.json, with this file's own arithmetic (not the report writer's): each claim is parsed
from report.md, recomputed from the raw numbers, and compared. A sentence this checker does not
know is an error, so the report cannot grow an unchecked claim."""

from __future__ import annotations

import json
import math
import os
import re
from typing import List

import numpy as np


def _items(text: str) -> List[str]:
    return [] if text == "none" else [t.strip() for t in re.split(r", (?![^(]*\))", text)]


def _g(value: float, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


class Checker:
    def __init__(self, folder: str) -> None:
        with open(os.path.join(folder, "results.json")) as f:
            self.results = json.load(f)
        with open(os.path.join(folder, "report.md")) as f:
            self.report = f.read()
        self.th = self.results["thresholds"]
        self.label = self.results["labels"]
        self.runs = self.results["runs"]
        self.checked = 0

    def run(self, T: int, clip: bool, key: str):
        return next(r for r in self.runs if r["T"] == T and r["clip"] == clip and r["cell"] == key)

    def by_label(self, label: str) -> str:
        return next(k for k, v in self.label.items() if v == label)

    # ---- the sentences -----------------------------------------------------------------------
    def check_bullet(self, line: str) -> None:
        th = self.th
        m = re.fullmatch(r"Vocabulary (\d+): the recurrent layer is (\d+)% of a training step \(([\d.]+) of ([\d.]+) ms\)\.", line)
        if m:
            row = next(r for r in self.results["timing"] if r["vocab"] == int(m[1]))
            assert int(m[2]) == round(100 * row["layer_train_ms"] / row["network_train_ms"]), line
            assert m[3] == f"{row['layer_train_ms']:.2f}" and m[4] == f"{row['network_train_ms']:.2f}", line
            return
        m = re.fullmatch(r"The output layer, softmax and loss take more than half of the training step from vocabulary (\d+) on\.", line)
        if m:
            shares = [(r["vocab"], r["layer_train_ms"] / r["network_train_ms"]) for r in self.results["timing"]]
            assert next(v for v, s in shares if s < 0.5) == int(m[1]), line
            return
        if line == "The recurrent layer is more than half of the training step at every measured vocabulary.":
            assert all(r["layer_train_ms"] / r["network_train_ms"] >= 0.5 for r in self.results["timing"]), line
            return
        m = re.fullmatch(r"T=(\d+), (no clipping|clipping ([\d.]+)): solved \(validation MSE < ([\d.]+)\) by (.*); "
                         r"not solved \(final MSE\) by (.*); diverged by (.*)\.", line)
        if m:
            T, clip = int(m[1]), m[2] != "no clipping"
            assert float(m[4]) == th["solved_mse"] and (not clip or float(m[3]) == th["clip_norm"]), line
            group = [r for r in self.runs if r["T"] == T and r["clip"] == clip]
            solved = {f"{self.label[r['cell']]} (step {r['solved_at']})" for r in group if r["solved_at"] is not None}
            for r in group:  # solved means a validation MSE under the threshold at that step
                if r["solved_at"] is not None:
                    assert dict(map(tuple, r["evals"]))[r["solved_at"]] < th["solved_mse"], line
                else:
                    assert all(v >= th["solved_mse"] or not math.isfinite(v) for _, v in r["evals"]), line
            unsolved = {f"{self.label[r['cell']]} ({_g(r['final_mse'], '.3g')})" for r in group
                        if r["solved_at"] is None and r["diverged_at"] is None}
            diverged = {f"{self.label[r['cell']]} (step {r['diverged_at']})" for r in group if r["diverged_at"] is not None}
            assert set(_items(m[5])) == solved and set(_items(m[6])) == unsolved and set(_items(m[7])) == diverged, line
            return
        m = re.fullmatch(r"T=(\d+): clipping at ([\d.]+) acted \(gradient norm > ([\d.]+)\) on (.*?)(?:; never on (.*), "
                         r"whose clipped and unclipped runs are therefore the same run)?\.", line)
        if m:
            T, limit = int(m[1]), float(m[2])
            assert limit == th["clip_norm"] == float(m[3]), line
            acted = {}
            for item in _items(m[4]):
                mm = re.fullmatch(r"(.+) \((\d+) of (\d+) steps\)", item)
                acted[mm[1]] = (int(mm[2]), int(mm[3]))
            never = _items(m[5] or "none")
            for key in self.label:
                clipped = self.run(T, True, key)
                count = int(np.sum(np.asarray(clipped["grad_norms"]) > limit))
                if count:
                    assert acted.get(self.label[key]) == (count, len(clipped["grad_norms"])), line
                else:
                    assert self.label[key] in never, line
                    # The claim itself: no step was clipped, so both runs trained identically.
                    assert clipped["evals"] == self.run(T, False, key)["evals"], (line, key)
            return
        m = re.fullmatch(r"T=(\d+): the largest gradient norm \(before clipping\) is at step 1, where a clipped run is "
                         r"still the same as its unclipped twin, for (.*)\.", line)
        if m:
            T, listed = int(m[1]), _items(m[2])
            for key in self.label:
                first = []
                for clip in (False, True):
                    g = [v if math.isfinite(v) else -math.inf for v in self.run(T, clip, key)["grad_norms"]]
                    first.append(max(range(len(g)), key=g.__getitem__) == 0)
                assert (self.label[key] in listed) == all(first), (line, key)
                if all(first):  # the same step-1 gradient in both runs
                    assert self.run(T, False, key)["grad_norms"][0] == self.run(T, True, key)["grad_norms"][0], line
            return
        m = re.fullmatch(r"T=(\d+), no clipping: gradient spikes \(steps whose norm exceeds ([\d.]+)x the run's median\) "
                         r"in (.*?)(?:; none in (.*))?\.", line)
        if m:
            T, factor = int(m[1]), float(m[2])
            assert factor == th["spike_factor"], line
            spikes = {re.fullmatch(r"(.+) \((\d+)\)", i)[1]: int(re.fullmatch(r"(.+) \((\d+)\)", i)[2]) for i in _items(m[3])}
            for key in self.label:
                g = np.asarray([v for v in self.run(T, False, key)["grad_norms"] if math.isfinite(v)])
                count = int(np.sum(g > factor * np.median(g))) if g.size else 0
                assert spikes.get(self.label[key], 0) == count, (line, key, count)
                assert (self.label[key] in _items(m[4] or "none")) == (count == 0), line
            return
        m = re.fullmatch(r"After training \(T=(\d+), clipped runs\), the gradient reaching the first input step relative to "
                         r"the last: (.*); below ([\d.e-]+) \(vanished before the start\) for (.*); at least ([\d.e-]+) "
                         r"\(or not measurable\) for (.*)\.", line)
        if m:
            T, limit = int(m[1]), float(m[3])
            assert limit == th["vanished_ratio"] == float(m[5]), line
            stated = {i.rsplit(" ", 1)[0]: i.rsplit(" ", 1)[1] for i in _items(m[2])}
            for key in self.label:
                g = self.run(T, True, key)["grad_by_step"]
                ratio = g[0] / g[-1] if g[-1] > 0 and math.isfinite(g[0]) and math.isfinite(g[-1]) else float("nan")
                assert stated[self.label[key]] == _g(ratio, ".2g"), (line, key)
                vanished = math.isfinite(ratio) and ratio < limit
                assert (self.label[key] in _items(m[4])) == vanished and (self.label[key] in _items(m[6])) == (not vanished), line
            return
        raise AssertionError(f"a sentence the checker does not know: {line!r}")

    def check_table_row(self, cells: List[str]) -> None:
        if len(cells) == 8:  # the timing table
            row = next(r for r in self.results["timing"] if r["vocab"] == int(cells[0]))
            assert cells[1:3] == [f"{row['layer_train_ms']:.2f}", f"{row['network_train_ms']:.2f}"], cells
            assert cells[3] == f"{100 * row['layer_train_ms'] / row['network_train_ms']:.0f}%", cells
            return
        if len(cells) == 9:  # the adding runs' table
            name, T, clip, final, outcome, steps, gmax, clipped, _ = cells
            run = next(r for r in self.runs if r["T"] == int(T) and r["clip"] == (clip != "off")
                       and self.results["descriptions"][r["cell"]] == name)
            assert final == _g(run["final_mse"], ".4g"), cells
            expected = (str(run["solved_at"]) if run["solved_at"] is not None else
                        f"diverged (step {run['diverged_at']})" if run["diverged_at"] is not None else "not solved")
            assert outcome == expected and int(steps) == run["steps"], cells
            finite = [g for g in run["grad_norms"] if math.isfinite(g)]
            assert gmax == _g(max(finite) if finite else float("nan"), ".3g"), cells
            if run["clip"]:
                assert int(clipped) == sum(g > self.th["clip_norm"] for g in run["grad_norms"]), cells
            return
        raise AssertionError(f"a table row the checker does not know: {cells}")

    def check(self) -> int:
        """Checks every line; returns how many claims were checked."""
        known_prefixes = ("# rnnkit compare", "rnnkit ", "## ", "LSTM, T=", "Hidden ", "What the runs show:", "![",
                          "(matplotlib is not installed", "|---", "| vocabulary |", "| cell |")
        for line in self.report.splitlines():
            if not line.strip():
                continue
            if line.startswith("- "):
                self.check_bullet(line[2:])
                self.checked += 1
            elif line.startswith("| ") and not line.startswith("| vocabulary") and not line.startswith("| cell"):
                self.check_table_row([c.strip() for c in line.strip("|").split("|")])
            else:
                assert line.startswith(known_prefixes), f"an unchecked paragraph: {line[:80]!r}"
        s = self.results["settings"]
        assert f"Hidden {s['hidden']}, batch {s['batch']}," in self.report
        assert f"{self.results['threads']} thread(s)" in self.report
        return self.checked
