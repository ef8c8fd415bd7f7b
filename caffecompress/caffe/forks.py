"""The inventory of Caffe forks: which field numbers each adds to the messages we parse.

Data only (documented in ``proto/FORKS.md``; the facts come from each fork's
own ``caffe.proto``, diffed against BVLC master, in
``shared/reference/caffe-forks.md``). The reader does not need it: every field
BVLC does not declare stays unknown bytes whatever it means. It is used to
say what an opaque field probably is (``info``) and to build the test
fixtures (a layer carrying fork X's field N, with a payload of its type).

Types: ``bool``, ``enum``, ``int32``, ``uint32`` (varints), ``float``
(fixed32), ``string``, ``bytes``, ``rep string``, ``rep uint32``, or a
message name (``"PSROIPoolingParameter"``).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ForkField", "FORKS", "FORK_FIELDS", "CLASHES", "fields_of", "candidates", "hint"]


class ForkField(NamedTuple):
    """One field a fork adds (or redefines) in a message we parse."""

    fork: str
    message: str
    number: int
    type: str
    name: str


#: Fork key -> (display name, repository @ ref the numbers were read at).
FORKS = {
    "caffeonspark": ("CaffeOnSpark", "yahoo/caffe@fc0a02ef (CaffeOnSpark's caffe-public)"),
    "ssd": ("SSD", "weiliu89/caffe@4817bf8b (branch ssd)"),
    "rfcn": ("R-FCN", "daijifeng001/caffe-rfcn@543f8f6a"),
    "fastrcnn": ("Fast/Faster R-CNN", "rbgirshick/caffe-fast-rcnn@4115385d"),
    "mobilenet": ("MobileNet depthwise", "yonghenglh6/DepthwiseConvolution (no proto changes)"),
    "nvcaffe": ("NVCaffe", "NVIDIA/caffe@87a25543"),
    "intel": ("Intel Caffe", "intel/caffe@44d53638"),
    "microsoft": ("Microsoft Caffe", "Microsoft/caffe@ed05614c"),
    "caffewindows": ("caffe-windows", "happynear/caffe-windows@967eedf2"),
    "rtpose": ("OpenPose rtpose", "CMU-Perceptual-Computing-Lab/caffe_rtpose@a4778bb1"),
    "openpose": ("OpenPose's Caffe", "CMU-Perceptual-Computing-Lab/caffe@2d4bf549 (no proto changes)"),
    "opencv": ("OpenCV dnn", "opencv/opencv modules/dnn/src/caffe/opencv-caffe.proto@036f7218"),
}

_L, _N, _B = "LayerParameter", "NetParameter", "BlobProto"
_CONV, _POOL, _BN, _IP = "ConvolutionParameter", "PoolingParameter", "BatchNormParameter", "InnerProductParameter"


def _f(fork, message, number, type_, name):
    return ForkField(fork, message, number, type_, name)


#: Every field of the inventory, fork by fork.
FORK_FIELDS: tuple = (
    _f("caffeonspark", _L, 10001, "string", "source_class"),
    _f("caffeonspark", _L, 10010, "CoSDataParameter", "cos_data_param"),
    _f("caffeonspark", "MemoryDataParameter", 10000, "bool", "share_in_parallel"),
    _f("caffeonspark", "MemoryDataParameter", 10001, "string", "source"),
    _f("caffeonspark", "MemoryDataParameter", 10002, "rep string", "dataframe_column_select"),
    _f("ssd", _L, 200, "AnnotatedDataParameter", "annotated_data_param"),
    _f("ssd", _L, 201, "MultiBoxLossParameter", "multibox_loss_param"),
    _f("ssd", _L, 202, "PermuteParameter", "permute_param"),
    _f("ssd", _L, 203, "PriorBoxParameter", "prior_box_param"),
    _f("ssd", _L, 204, "DetectionOutputParameter", "detection_output_param"),
    _f("ssd", _L, 205, "DetectionEvaluateParameter", "detection_evaluate_param"),
    _f("ssd", _L, 206, "NormalizeParameter", "norm_param"),
    _f("ssd", _L, 207, "VideoDataParameter", "video_data_param"),
    _f("rfcn", _L, 10000, "BoxAnnotatorOHEMParameter", "box_annotator_ohem_param"),
    _f("rfcn", _L, 10001, "PSROIPoolingParameter", "psroi_pooling_param"),
    _f("rfcn", _L, 8266711, "ROIPoolingParameter", "roi_pooling_param"),
    _f("rfcn", _L, 8266712, "SmoothL1LossParameter", "smooth_l1_loss_param"),
    _f("rfcn", "LossParameter", 4, "float", "pre_fixed_normalizer"),
    _f("fastrcnn", _L, 8266711, "ROIPoolingParameter", "roi_pooling_param"),
    _f("fastrcnn", _L, 8266712, "SmoothL1LossParameter", "smooth_l1_loss_param"),
    _f("nvcaffe", _L, 145, "enum", "forward_type"),
    _f("nvcaffe", _L, 146, "enum", "backward_type"),
    _f("nvcaffe", _L, 147, "enum", "forward_math"),
    _f("nvcaffe", _L, 148, "enum", "backward_math"),
    _f("nvcaffe", _L, 149, "bool", "debug"),
    _f("nvcaffe", _L, 150, "int32", "cudnn_math_override"),
    _f("nvcaffe", _L, 151, "RecurrentParameter", "recurrent_param"),
    _f("nvcaffe", _L, 152, "TRTParameter", "trt_param"),
    _f("nvcaffe", _L, 6801, "DetectNetGroundTruthParameter", "detectnet_groundtruth_param"),
    _f("nvcaffe", _L, 6802, "DetectNetAugmentationParameter", "detectnet_augmentation_param"),
    _f("nvcaffe", _N, 11, "enum", "default_forward_type"),
    _f("nvcaffe", _B, 10, "enum", "raw_data_type"),
    _f("nvcaffe", _B, 11, "enum", "raw_diff_type"),
    _f("nvcaffe", _B, 12, "bytes", "raw_data"),
    _f("nvcaffe", _B, 13, "bytes", "raw_diff"),
    _f("nvcaffe", _CONV, 19, "enum", "cudnn_convolution_algo_seeker"),
    _f("nvcaffe", _CONV, 20, "string", "conv_algos_override"),
    _f("nvcaffe", _BN, 5, "FillerParameter", "scale_filler"),
    _f("nvcaffe", _BN, 6, "FillerParameter", "bias_filler"),
    _f("nvcaffe", _BN, 7, "bool", "scale_bias"),
    _f("nvcaffe", "LossParameter", 4, "float", "label_smoothing"),
    _f("intel", _L, 148, "SmoothL1LossParameter", "smooth_l1_loss_param"),
    _f("intel", _L, 149, "string", "engine"),
    _f("intel", _L, 150, "MultinodeLayerParameter", "multinode"),
    _f("intel", _L, 151, "MnActivationParameter", "mn_activation_param"),
    _f("intel", _L, 152, "BoxAnnotatorOHEMParameter", "box_annotator_ohem_param"),
    _f("intel", _L, 153, "PSROIPoolingParameter", "psroi_pooling_param"),
    _f("intel", _L, 154, "ROIPoolingParameter", "roi_pooling_param"),
    _f("intel", _L, 155, "SpatialDropoutParameter", "spatial_dropout_param"),
    _f("intel", _L, 156, "MnParamGradCompressParameter", "mn_grad_compress_param"),
    _f("intel", _L, 158, "QuantizationParameter", "quantization_param"),
    _f("intel", _L, 159, "ReorgParameter", "reorg_param"),
    _f("intel", _L, 208, "SplitParameter", "split_param"),
    _f("intel", _L, 209, "RegionLossParameter", "region_loss_param"),
    _f("intel", _L, 301, "EvalDetectionParameter", "eval_detection_param"),
    _f("intel", _POOL, 13, "bool", "avg_include_pad"),
    _f("intel", _POOL, 14, "int32", "axis"),
    _f("intel", _CONV, 19, "bool", "relu"),
    _f("intel", _CONV, 20, "float", "negative_slope"),
    _f("intel", _CONV, 21, "string", "conv_algorithm"),
    _f("intel", _CONV, 24, "enum", "fusion_type"),
    _f("intel", _BN, 4, "enum", "engine"),
    _f("intel", _BN, 5, "bool", "use_weight_bias"),
    _f("intel", _BN, 6, "bool", "bias_term"),
    _f("intel", _BN, 7, "FillerParameter", "filler"),
    _f("intel", _BN, 8, "FillerParameter", "bias_filler"),
    _f("intel", _BN, 9, "uint32", "stats_batch_size"),
    _f("intel", _BN, 10, "bool", "relu"),
    _f("intel", _IP, 7, "enum", "engine"),
    _f("intel", _IP, 8, "bool", "relu"),
    _f("intel", _IP, 9, "float", "negative_slope"),
    _f("intel", _N, 9, "string", "engine"),
    _f("intel", _N, 10, "CompileNetState", "compile_net_state"),
    _f("intel", _N, 11, "uint32", "bn_stats_batch_size"),
    _f("intel", _N, 101, "MultinodeParameter", "multinode"),
    _f("microsoft", _L, 147, "ROIPoolingParameter", "roi_pooling_param"),
    _f("microsoft", _L, 148, "SmoothL1LossParameter", "smooth_l1_loss_param"),
    _f("microsoft", _L, 149, "PSROIPoolingParameter", "psroi_pooling_param"),
    _f("microsoft", _L, 150, "BoxAnnotatorOHEMParameter", "box_annotator_ohem_param"),
    _f("microsoft", _L, 0x004D4944, "MILDataParameter", "mil_data_param"),
    _f("microsoft", _L, 0x004D494C, "MILParameter", "mil_param"),
    _f("caffewindows", _L, 0x004D4944, "MILDataParameter", "mil_data_param"),
    _f("caffewindows", _L, 0x004D494C, "MILParameter", "mil_param"),
    _f("caffewindows", _L, 200, "BNParameter", "bn_param"),
    _f("caffewindows", _L, 201, "LocalParameter", "local_param"),
    _f("caffewindows", _L, 204, "ROIPoolingParameter", "roi_pooling_param"),
    _f("caffewindows", _L, 206, "SubRegionParameter", "sub_region_param"),
    _f("caffewindows", _L, 211, "CenterLossParameter", "center_loss_param"),
    _f("caffewindows", _L, 214, "NormalizeParameter", "normalize_param"),
    _f("caffewindows", _L, 220, "PSROIPoolingParameter", "psroi_pooling_param"),
    _f("caffewindows", _L, 224, "PermuteParameter", "permute_param"),
    _f("caffewindows", _POOL, 13, "float", "blobs_lr"),
    _f("caffewindows", _POOL, 14, "float", "blobs_a_min"),
    _f("caffewindows", _CONV, 19, "enum", "cudnn_convolution_algo_seeker"),
    _f("caffewindows", _CONV, 20, "rep uint32", "shape_offset"),
    _f("caffewindows", _BN, 4, "bool", "disable_mean"),
    _f("caffewindows", _BN, 5, "bool", "disable_variance"),
    _f("caffewindows", _BN, 7, "FillerParameter", "scale_filler"),
    _f("caffewindows", _BN, 8, "FillerParameter", "bias_filler"),
    _f("caffewindows", _IP, 7, "bool", "normalize"),
    _f("caffewindows", "ScaleParameter", 6, "float", "min_value"),
    _f("caffewindows", "ScaleParameter", 7, "float", "max_value"),
    _f("caffewindows", "V1LayerParameter", 43, "BNParameter", "bn_param"),
    _f("rtpose", _L, 148, "ImResizeParameter", "imresize_param"),
    _f("rtpose", _L, 149, "NmsParameter", "nms_param"),
    _f("opencv", _L, 147, "DetectionOutputParameter", "detection_output_param"),
    _f("opencv", _L, 148, "PermuteParameter", "permute_param"),
    _f("opencv", _L, 149, "NormalizeBBoxParameter", "norm_param"),
    _f("opencv", _L, 150, "PriorBoxParameter", "prior_box_param"),
    _f("opencv", _L, 201, "ProposalParameter", "proposal_param"),
    _f("opencv", _L, 10002, "PSROIPoolingParameter", "psroi_pooling_param"),
    _f("opencv", _L, 8266711, "ROIPoolingParameter", "roi_pooling_param"),
    _f("opencv", _B, 10, "enum", "raw_data_type"),
    _f("opencv", _B, 12, "bytes", "raw_data"),
    _f("opencv", _BN, 7, "bool", "scale_bias"),
)

#: The numbers that mean different things in different forks (or in BVLC):
#: clash id -> (message, number, what collides). BVLC's own meaning is listed
#: where it has one; ``FORK_FIELDS`` holds the forks' side.
CLASHES = {
    "L10001": (_L, 10001, "CaffeOnSpark string vs R-FCN message (our full schema: R-FCN's)"),
    "L148": (_L, 148, "BVLC ClipParameter vs Intel/Microsoft SmoothL1, rtpose ImResize, NVCaffe enum, OpenCV Permute"),
    "L149": (_L, 149, "Intel string vs Microsoft PSROIPooling, rtpose Nms, NVCaffe bool, OpenCV NormalizeBBox"),
    "L147": (_L, 147, "BVLC SwishParameter vs Microsoft ROIPooling, NVCaffe enum, OpenCV DetectionOutput"),
    "L145": (_L, 145, "BVLC ParameterParameter vs NVCaffe enum"),
    "L146": (_L, 146, "BVLC RecurrentParameter vs NVCaffe enum"),
    "L200": (_L, 200, "SSD AnnotatedData vs caffe-windows BN"),
    "L201": (_L, 201, "SSD MultiBoxLoss vs caffe-windows Local vs OpenCV Proposal"),
    "L204": (_L, 204, "SSD DetectionOutput vs caffe-windows ROIPooling"),
    "L206": (_L, 206, "SSD Normalize vs caffe-windows SubRegion"),
    "P13": (_POOL, 13, "BVLC enum round_mode vs Intel bool vs caffe-windows float"),
    "C19": (_CONV, 19, "NVCaffe/caffe-windows enum vs Intel bool"),
    "C20": (_CONV, 20, "NVCaffe string vs Intel float vs caffe-windows repeated uint32"),
    "BN7": (_BN, 7, "NVCaffe/OpenCV bool vs Intel/caffe-windows FillerParameter"),
    "LOSS4": ("LossParameter", 4, "R-FCN/Intel float vs NVCaffe float (both fixed32, other meanings)"),
}


def fields_of(fork: str) -> list:
    """The inventory's fields of one fork (a key of :data:`FORKS`)."""
    return [f for f in FORK_FIELDS if f.fork == fork]


def candidates(message: str, number: int) -> list:
    """Every fork field with this message and number."""
    return [f for f in FORK_FIELDS if f.message == message and f.number == number]


def hint(message: str, number: int) -> str:
    """``"CaffeOnSpark source_class (string) or R-FCN psroi_pooling_param (...)"``, or ''."""
    seen, parts = set(), []
    for f in candidates(message, number):
        key = (FORKS[f.fork][0], f.name, f.type)
        if key not in seen:
            seen.add(key)
            parts.append(f"{key[0]} {f.name} ({f.type})")
    return " or ".join(parts)
