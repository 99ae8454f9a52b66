"""OpenVINO IR (model.xml + model.bin) for OpenVINO's CPU plugin: the encoders the ONNX export
writes (onnx.py), with quantized linears in the Q/DQ form OpenVINO runs on its integer kernels
(nn/quant_linear_qdq.py), converted by OpenVINO's own ONNX frontend.

Why through ONNX: the graph is written once, from the ArchMap (onnx_encoder.py), and OpenVINO's
frontend is the supported way in; what differs for OpenVINO is only how a quantized linear is
spelled. The integer-op form ONNX Runtime fuses (MatMulInteger) is not fused by OpenVINO and runs
slower there than fp32, while Q/DQ pairs become FakeQuantize (static activations) and compressed
int8 weights (dynamic activations: the CPU plugin quantizes the activations itself), both run as
int8 kernels. The weight codes and scales in model.bin are slimformer's, never re-quantized.

The IR records `INFERENCE_PRECISION_HINT = f32` in its runtime options: OpenVINO's CPU default
on CPUs with bf16 is to run every float op in bf16, which would change the quality slimformer
measured; a user may override it when compiling.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import MissingDependencyError, UnsupportedModelError
from ..model import Model

XML = "model.xml"
PRECISION = "f32"  # the IR's own runtime option (see the module docstring)


def _ov():
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("OpenVINO export and runtime need openvino: pip install "
                                     "'slimformer[export]'") from None
    return openvino


def check_exportable(model: Model) -> None:
    from ..model.families import exports_for, family
    from .onnx import check_exportable as check_onnx
    if family(model.arch).onnx != "encoder" or model.is_causal:
        raise UnsupportedModelError(f"OpenVINO export writes sentence encoders; {model.arch.model_type!r} "
                                    f"({model.arch.kind}) exports as {' or '.join(exports_for(model.arch))}")
    check_onnx(model)
    from ..nn import QuantLinear, compressed_modules
    from ..nn.quant_linear import real_kernel
    for name, mod in compressed_modules(model.module).items():
        # activation grids slimformer itself only simulates (no int8 kernel) have no Q/DQ form
        if isinstance(mod, QuantLinear) and mod.act != "none" and real_kernel(mod.spec, mod.act, mod.in_features) is None:
            raise UnsupportedModelError(f"{name}: int8 activations with {mod.spec.describe()} weights (simulated "
                                        "in slimformer) have no OpenVINO int8 form; quantize int8 per channel "
                                        "symmetric, or export as onnx")
    _ov()


def write_openvino_folder(model: Model, folder: Path) -> dict:
    import onnx
    from .onnx import build_encoder, model_proto, write_folder_files
    ov = _ov()
    graph, counts = build_encoder(model, form="qdq")
    proto = model_proto(graph)
    staging = folder / "graph.onnx"  # the frontend's input; the folder is a temporary one (atomic_dir)
    big = sum(len(t.raw_data) for t in proto.graph.initializer) > 1_500_000_000
    onnx.save_model(proto, str(staging), save_as_external_data=big, location="graph.onnx.data")
    try:
        ir = ov.convert_model(str(staging))
    except Exception as e:  # OpenVINO's frontend errors are its own classes; say which op it was
        raise UnsupportedModelError(f"OpenVINO could not convert the graph ({str(e).splitlines()[0][:200]}); "
                                    "export as onnx") from None
    for p in folder.glob("graph.onnx*"):
        p.unlink()
    ir.set_rt_info(PRECISION, ["runtime_options", "INFERENCE_PRECISION_HINT"])
    ov.save_model(ir, str(folder / XML), compress_to_fp16=False)  # fp16 weights would change the model
    write_folder_files(model, folder, "openvino", counts, openvino=ov.__version__,
                       inference_precision=PRECISION)
    return {"openvino": ov.__version__, "linears": counts, "ops": len(ir.get_ops())}
