"""int8: calibration, the int8 graph (a rewrite of the batch-norm folded float graph), its engine and its
error report.

Modules, in the order they build on each other: ``qgraph`` (QParams, QLayer, QGraph, its file format, which
layer kinds int8 supports), ``weights`` (per-channel and pair-safe weight quantisation), ``engine`` (the int8
CPU engine, ``Int8Plan``), ``calibrate`` (ranges and the QGraph), ``report`` (int8 against float), ``network``
(``quantize``, ``load_quantized``, ``QuantizedNetwork``).

The int8 graph (``QGraph``) is what three consumers execute identically: darknetpy's int8 engine
(``engine.Int8Plan``), onnxruntime running the QDQ export (``darknetpy.export.onnx_qdq.export_qdq``), and ST Edge AI Core
on the STM32N6 NPU. Its quantisation scheme is ST's ONNX Runtime recipe (``../shared/specs/stm32n6.md`` §1.4,
§2.2):

* weights int8 per output channel (axis 0), symmetric, zero point 0, in [-127, 127];
* biases int32 with scale ``float32(s_in * s_w[c])`` and zero point 0;
* activations int8 per tensor, asymmetric: ``scale = (max(hi, 0) - min(lo, 0)) / 255``,
  ``zero_point = round(-128 - min(lo, 0) / scale)`` (onnxruntime's ``compute_scale_zp``);
* the network input: scale ``float32(1/255)``, zero point -128 for [0, 1] images (so q = u8 - 128);
* relu and relu6 are not separate steps: their output range starts at 0, so the zero point is -128 and the
  QuantizeLinear saturation *is* the activation (onnxruntime's quantizer drops those nodes the same way);
  leaky has its own step, conv -> Q(pre) -> DQ -> LeakyRelu -> Q(out);
* maxpool, upsample (nearest), reorg, dropout and single-input routes share their input's parameters;
  avgpool, concat and shortcut outputs get their own; a softmax output is quantised with ST's fixed scale
  1/255, zero point -128 (``softmax="int8"``), or left in float (``softmax="float"``);
* detectors: the graph ends at the heads' inputs. A [region]/[yolo]/[detection] layer computes nothing in int8
  (its "output" is the int8 tensor entering it, with that tensor's parameters); the host dequantises that
  tensor and runs the head and darknet's box decoding in float (``QuantizedNetwork.detect``,
  ``darknetpy.decode``), as ST's application does with the NPU's outputs.

**The u8 x s8 pair constraint** (``pair_safe=True``, the default). onnxruntime on x86 runs int8 activations
as uint8 (x + 128) and, on AVX2 CPUs without VNNI, multiplies them by the int8 weights with ``vpmaddubsw``,
which adds two neighbouring products (consecutive input channels of one kernel tap, or consecutive elements of
the flattened (ky, kx, c) kernel) in a *saturating* int16. With weights up to 127 and activations up to 255 a
pair can reach 64770 and is clipped to 32767: onnxruntime then computes something else than the model says
(measured: 85-100 % of a layer's outputs change on adversarial inputs). ``pair_safe`` chooses each output
channel's weight scale so that every such pair satisfies ``sum(positive w) <= 128`` and
``sum(-negative w) <= 128``; then no pair can saturate, and the model means the same on every onnxruntime
build, on the NPU and in darknetpy's engine (which multiplies the same pairs with the same instruction; on
VNNI CPUs MLAS and the engine both sum exactly with ``vpdpbusd``). It
costs 1-4 dB of weight SQNR per layer, yet measured better end to end (Tiny Darknet, 35 evaluation crops:
mean KL 0.065 vs 0.112 for plain scaling executed exactly, and vs 1.24 for plain scaling as onnxruntime's
AVX2 kernels run it; see the README's int8 section).

Calibration methods (``CALIB_METHODS``), applied to each activation tensor separately:

* ``minmax``: the observed range (ST's recipe, the default);
* ``percentile``: the 0.01 % / 99.99 % percentiles of the observed values (zero always kept);
* ``mse``: the clipping range that minimises the quantisation mean squared error of the observed values;
* ``auto``: per tensor, the minimum-MSE choice among the three ranges above.

The logits (what a [softmax] output reads) stay ``minmax`` unless a layer dict names them: clipping them
saturates the best class scores into ties. ``bias_correction`` ("weight" or "sequential") adds the mean
output error of quantisation to conv/connected biases; measured, it helps ``mse`` a little and hurts
``minmax``, so it is off by default.

Serialisation: one ``.npz`` with the arrays and a JSON description of the graph (``QGraph.save``/``load``).

>>> net = darknetpy.load("cfg/tiny.cfg", "weights/tiny.weights")          # doctest: +SKIP
>>> qnet = darknetpy.quantize(net, "calib_images/", method="minmax")      # doctest: +SKIP
>>> probs = qnet.predict(x)                                               # doctest: +SKIP
"""

from .network import QuantizedNetwork, load_quantized, quantize

__all__ = ["QuantizedNetwork", "load_quantized", "quantize"]
