"""``darknetpy eval``: Top-1/Top-5 of the float network, and of its int8 network side by side, on a labelled
image folder.

    darknetpy eval CFG WEIGHTS DIR [--int8 [--calib DIR]] [--labels FILE] [--top 5] [--json] [--plot FILE.png]
                   [--jobs N] [--threads N]

DIR holds one sub-folder per class, as ImageNet's validation layout: ``DIR/<class>/**/*.jpg``. A folder's name is
the class: a line of ``--labels`` (default: darknet's imagenet.shortnames.list for 1000-class networks, as
``classify``), or else its index. Images are preprocessed as ``classify`` does (letterbox, the cfg's mean/std).
With ``--int8`` the network is quantised on ``--calib DIR`` (default: up to 64 of the evaluation images, spread
over the classes) and both networks run on every image; the report adds their top-1 agreement and ST's metrics of
the int8 output against the float one (darknetpy.metrics).

Both cores: the images are shared among ``--jobs`` processes (default: one per core when there are at least
``MIN_IMAGES_PER_JOB`` images per process), each running the kernels on one thread; the main process compiles
the kernels first (on a cold cache sharing the work with a helper, as ``classify``), so the others load them
from the cache. ``--jobs 1`` runs in this process with ``--threads`` kernel threads instead (default all cores).

A bad image is reported (``darknetpy: error: IMAGE: ...``, and in --json's ``per_image``), the others go on, and
the exit code is then the first such error's (5), as ``classify``. A progress bar runs on stderr when it is a
terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

from . import jsonout
from ..errors import DarknetpyError, UnsupportedError, about
from .args import positive_int

MIN_IMAGES_PER_JOB = 16          # below this many images per process, starting processes costs more than it gains
DEFAULT_CALIB_IMAGES = 64        # --int8 without --calib: this many evaluation images, spread over the classes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cfg", help="network .cfg")
    p.add_argument("weights", help="network .weights")
    p.add_argument("dir", metavar="DIR", help="labelled images: one sub-folder per class (ImageNet's val layout)")
    p.add_argument("--int8", action="store_true", help="also evaluate the int8 network, side by side")
    p.add_argument("--calib", metavar="DIR", help=f"with --int8: calibration images (default: up to "
                                                  f"{DEFAULT_CALIB_IMAGES} of the evaluation images)")
    p.add_argument("--labels", metavar="FILE", help="class names, one a line: folder names are looked up in it "
                                                    "(default: imagenet.shortnames.list for 1000 classes; "
                                                    "folders may also be named by class index)")
    p.add_argument("--top", type=positive_int, default=5, help="the k of the top-k accuracy (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="draw the confusion of int8 against float top-1 (without "
                                                      "--int8: float top-1 against the label) into a PNG "
                                                      "(needs the [plot] extra: matplotlib)")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="processes sharing the images (default: one per core for large folders)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="kernel threads with --jobs 1 (default: all cores)")


# -- the labelled folder ---------------------------------------------------------------------------------------

@dataclass
class Sample:
    index: int
    path: str
    label: int


def class_index(name: str, names: Optional[list[str]], classes: int) -> Optional[int]:
    """The class of a folder called ``name``: its line in ``names`` (first occurrence), else its index."""
    if names is not None and name in names:
        return names.index(name)
    if name.isdigit() and int(name) < classes:
        return int(name)
    return None


def labelled_folder(directory: str, names: Optional[list[str]], classes: int) -> list[Sample]:
    """Every image of every class folder of ``directory``, in path order, with its class index."""
    from ..errors import ImageError
    from ..image import IMAGE_EXTENSIONS, find_images

    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        raise ImageError(f"evaluation directory {directory}: does not exist") from None
    except NotADirectoryError:
        raise ImageError(f"evaluation directory {directory}: is not a directory") from None
    except OSError as e:
        raise ImageError(f"evaluation directory {directory}: cannot read it: {e.strerror or e}") from None
    loose = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    if loose:
        import warnings
        warnings.warn(f"{directory}: {len(loose)} image(s) outside the class folders (e.g. {loose[0]}): not "
                      f"evaluated (DIR/<class>/image)")
    folders = [e for e in entries if e.is_dir()]
    unknown = [e.name for e in folders if class_index(e.name, names, classes) is None]
    if unknown:
        what = "a line of the labels file nor a class index" if names else f"a class index (0..{classes - 1})"
        raise DarknetpyError(f"{directory}: {len(unknown)} folder(s) name no class ({', '.join(unknown[:5])}"
                             f"{', ...' if len(unknown) > 5 else ''}): a class folder's name is {what}")
    samples: list[Sample] = []
    for e in folders:
        try:
            paths = find_images(e.path, what="class")
        except ImageError:                  # an empty class folder: nothing to evaluate there
            continue
        label = class_index(e.name, names, classes)
        samples += [Sample(len(samples) + i, p, label) for i, p in enumerate(paths)]
    if not samples:
        raise ImageError(f"evaluation directory {directory}: no images in class folders (DIR/<class>/image)")
    return samples


# -- running the networks ----------------------------------------------------------------------------------------

def evaluate_one(net, qnet, sample: Sample, k: int):
    """(record, float output, int8 output or None) for one image; a DarknetpyError of the image is its record."""
    import numpy as np

    from ..image import load_image

    rec: dict = {"image": sample.path, "label": sample.label}
    try:
        x = net.preprocess(load_image(sample.path))
    except DarknetpyError as e:
        msg = about(sample.path, e)
        return {**rec, "error": msg, "exit_code": e.exit_code}, None, None
    pf = np.asarray(net.predict(x), np.float32).ravel()
    rec["float"] = [int(i) for i in np.argsort(-pf, kind="stable")[:k]]
    pq = None
    if qnet is not None:
        pq = np.asarray(qnet.predict(x), np.float32).ravel()
        rec["int8"] = [int(i) for i in np.argsort(-pq, kind="stable")[:k]]
    return rec, pf, pq


def _worker(cfg: str, weights: str, qgraph: Optional[str], samples: list, k: int, queue) -> None:
    """A process evaluating ``samples``: puts ("result", index, record, pf, pq) per image, then ("done",), or
    ("fatal", message, exit code) on an error that is not the image's."""
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the main process's to handle (it stops us)
    warnings.simplefilter("ignore")                   # the cfg's warnings were printed by the main process
    try:
        from ..int8 import load_quantized
        from ..network import load, set_threads

        set_threads(1)
        net = load(cfg, weights)
        qnet = load_quantized(qgraph) if qgraph else None
        for s in samples:
            rec, pf, pq = evaluate_one(net, qnet, s, k)
            queue.put(("result", s.index, rec, pf, pq))
        queue.put(("done",))
    except DarknetpyError as e:
        queue.put(("fatal", str(e), e.exit_code))
    except Exception as e:                            # noqa: BLE001 - reported by the main process
        queue.put(("fatal", f"evaluation process failed: {type(e).__name__}: {e}", 1))


class Jobs:
    """Worker processes started with ``spawn`` (numba's threads do not survive a fork)."""

    def __init__(self, args, qgraph: Optional[str], shares: list[list[Sample]]):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.queue = ctx.Queue()
        self.procs = [ctx.Process(target=_worker, args=(os.path.abspath(args.cfg), os.path.abspath(args.weights),
                                                        qgraph, share, args.top, self.queue), daemon=True)
                      for share in shares]
        for p in self.procs:
            p.start()
        self.running = len(self.procs)

    def poll(self, block: bool):
        """The next message, or None (non-blocking and nothing there). A process that died says so."""
        import queue as q

        while True:
            try:
                return self.queue.get(block=block, timeout=0.5 if block else None)
            except q.Empty:
                if not block:
                    return None
                if all(not p.is_alive() for p in self.procs) and self.queue.empty():
                    codes = [p.exitcode for p in self.procs]
                    return ("fatal", f"an evaluation process ended without its results (exit codes {codes})", 1)

    def stop(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=5)
        self.queue.close()


def _job_count(args, n: int) -> int:
    if args.jobs is not None:
        return min(args.jobs, n)
    cores = os.cpu_count() or 1
    return max(1, min(cores, n // MIN_IMAGES_PER_JOB))


def _calibration(args, samples: list[Sample]):
    if args.calib:
        from ..int8.calibrate import image_folder
        return image_folder(args.calib, what="calibration")
    step = max(1, len(samples) / DEFAULT_CALIB_IMAGES)
    return [samples[int(i * step)].path for i in range(min(len(samples), DEFAULT_CALIB_IMAGES))]


def run(args) -> int:
    if args.plot:                                     # before any work: a missing extra is an error right away
        from ..plots import require_matplotlib
        require_matplotlib()
    if args.calib and not args.int8:
        raise UnsupportedError("--calib goes with --int8")
    import numpy as np

    from .. import warmup
    from ..network import load, set_threads
    from .classify import _load_labels
    from .progress import progress_bar

    net = load(args.cfg, args.weights)
    if len(net.input_shape) != 3 or net.input_shape[0] != 3:
        raise UnsupportedError(f"{args.cfg}: eval feeds RGB images; the network takes {net.input_shape}")
    names = _load_labels(args.labels, net.classes)
    samples = labelled_folder(args.dir, names, net.classes)
    n = len(samples)
    jobs = _job_count(args, n)
    set_threads(args.threads if jobs == 1 else 1)
    quiet = args.json
    qnet = qgraph_file = None
    if args.int8:
        from ..int8 import quantize
        calib = _calibration(args, samples)
        qnet = quantize(net, calib, progress=None if quiet else progress_bar("calibrating"))
    # compile the kernels here (on a cold cache with classify's helper) before any other process starts
    if warmup.is_cold(net.graph, exact=net.exact):
        helper = warmup.start(net.graph, exact=net.exact)
        ok = False
        try:
            warmup.cooperate(helper, net.plan(), progress=(None if quiet else progress_bar("compiling"))
                             or (lambda done, total: None))
            ok = True
        finally:
            warmup.finish(helper, net.graph, exact=net.exact, mark=ok)
    if qnet is not None:
        qnet.predict(np.zeros(net.input_shape, np.float32))
    records: dict[int, dict] = {}
    outputs: dict[int, tuple] = {}
    first_error = 0
    progress = None if quiet else progress_bar("evaluating")

    def take(index: int, rec: dict, pf, pq) -> None:
        nonlocal first_error
        records[index] = rec
        if "error" in rec:
            print(f"darknetpy: error: {rec['error']}", file=sys.stderr)
            first_error = first_error or rec["exit_code"]
        else:
            outputs[index] = (pf, pq)
        if progress:
            progress(len(records), n)

    start = time.perf_counter()
    pool = None
    import tempfile
    with tempfile.TemporaryDirectory(prefix="darknetpy-eval-") as tmp:
        try:
            if jobs > 1:
                if qnet is not None:
                    qgraph_file = os.path.join(tmp, "int8.npz")
                    qnet.save(qgraph_file)
                pool = Jobs(args, qgraph_file, [samples[j::jobs] for j in range(1, jobs)])
            done_workers = 0
            for s in samples[::jobs]:
                take(s.index, *evaluate_one(net, qnet, s, args.top))
                while pool is not None and (msg := pool.poll(block=False)) is not None:
                    done_workers += _handle(msg, take)
            while pool is not None and done_workers < len(pool.procs):
                done_workers += _handle(pool.poll(block=True), take)
        finally:
            if pool is not None:
                pool.stop()
    seconds = time.perf_counter() - start
    return _report(args, net, qnet, samples, records, outputs, names, seconds, jobs) or first_error


def _handle(msg, take) -> int:
    """One message of a worker: a result (0), its end (1), or its failure (raised)."""
    if msg[0] == "result":
        take(*msg[1:])
        return 0
    if msg[0] == "done":
        return 1
    err = DarknetpyError(msg[1])
    err.exit_code = msg[2]
    raise err


def _report(args, net, qnet, samples, records, outputs, names, seconds, jobs) -> int:
    from ..metrics import Metrics, format_metrics

    k = args.top
    ok = [records[s.index] for s in samples if "error" not in records[s.index]]
    n = len(ok)
    agree = Metrics(classifier=True) if qnet is not None else None
    for s in samples:
        if s.index in outputs and agree is not None:
            pf, pq = outputs[s.index]
            agree.add(pq, pf)

    def accuracy(key: str) -> dict:
        top1 = sum(r[key][0] == r["label"] for r in ok) / n if n else None
        topk = sum(r["label"] in r[key][:k] for r in ok) / n if n else None
        return {"top1": top1, f"top{k}": topk}

    result = {"images": n, "float": accuracy("float")}
    if qnet is not None:
        result["int8"] = accuracy("int8")
        result["agreement"] = sum(r["int8"][0] == r["float"][0] for r in ok) / n if n else None
        result["metrics"] = {"int8_vs_float": agree.result()}
    result.update(failed=len(samples) - n, classes=len({s.label for s in samples}), seconds=seconds,
                  images_per_s=len(samples) / seconds if seconds > 0 else None, jobs=jobs,
                  per_image=[records[s.index] for s in samples])
    if args.plot and not ok:
        import warnings
        warnings.warn(f"no image could be evaluated: {args.plot} not drawn")
    elif args.plot:
        from ..plots import plot_confusion
        if qnet is not None:
            plot_confusion([r["float"][0] for r in ok], [r["int8"][0] for r in ok], args.plot, names=names)
        else:
            plot_confusion([r["label"] for r in ok], [r["float"][0] for r in ok], args.plot, names=names,
                           axes=("label", "float top-1"))
    if args.json:
        print(jsonout.dumps(result))
        return 0
    pct = (lambda v: "    n/a" if v is None else f"{100 * v:6.2f} %")
    print(f"{os.path.basename(args.cfg)} on {n} image(s) of {result['classes']} class(es) from {args.dir}"
          + (f" ({result['failed']} unreadable)" if result["failed"] else ""))
    print(f"{'':8s} {'top-1':>8s}  {f'top-{k}':>8s}")
    for key in ("float", "int8") if qnet is not None else ("float",):
        print(f"{key:8s} {pct(result[key]['top1'])}  {pct(result[key][f'top{k}'])}")
    if qnet is not None:
        same = sum(r["int8"][0] == r["float"][0] for r in ok)
        print(f"int8 top-1 agrees with float on {same}/{n} image(s) ({pct(result['agreement']).strip()})")
        print(f"int8 against float, ST's metrics: {format_metrics(result['metrics']['int8_vs_float'])}")
    sys.stdout.flush()
    print(f"evaluated {len(samples)} image(s) in {seconds:.2f} s ({result['images_per_s'] or 0:.1f} images/s, "
          f"{jobs} process{'es' if jobs > 1 else ''})", file=sys.stderr)
    if args.plot and ok:
        print(f"wrote the plot {args.plot}", file=sys.stderr)
    return 0
