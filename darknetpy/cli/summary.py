"""``darknetpy summary CFG``: darknet's layer table with parameters and BFLOPs (no weights needed)."""

from __future__ import annotations

from . import jsonout


def add_arguments(s) -> None:
    s.add_argument("cfg")
    s.add_argument("--json", action="store_true")


def run(args) -> int:
    from ..graph import load_graph
    from ..summary import summary_dict, summary_table

    graph = load_graph(args.cfg)
    if args.json:
        print(jsonout.dumps(summary_dict(graph)))
    else:
        print(summary_table(graph))
    return 0


