from fuse_export.contract import IO_CONTRACT, IO_CONTRACT_UINT8, Preprocessing, io_contract


def test_io_contract_names_and_order():
    assert IO_CONTRACT.input_names == ["image"]
    assert IO_CONTRACT.output_names == ["logits", "probabilities", "confidence"]
    assert io_contract(True) is IO_CONTRACT_UINT8 and io_contract(False) is IO_CONTRACT


def test_dynamic_axes_cover_batch_of_every_tensor():
    axes = IO_CONTRACT.dynamic_axes()
    assert axes == {"image": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"},
                    "confidence": {0: "batch"}}


def test_concrete_shapes():
    spec = IO_CONTRACT.to_dict(num_classes=7, image_size=64)
    assert spec["inputs"][0]["shape"] == ["batch", 3, 64, 64]
    assert [o["shape"] for o in spec["outputs"]] == [["batch", 7], ["batch", 7], ["batch", 1]]
    u8 = IO_CONTRACT_UINT8.to_dict(7, 64)
    assert u8["inputs"][0] == {"name": "image", "dtype": "uint8", "shape": ["batch", 64, 64, 3],
                               "doc": "raw RGB pixels at the input size"}


def test_preprocessing_round_trip_and_resize():
    pre = Preprocessing(image_size=224, class_names=("a", "b"), geometry="resize-crop")
    assert pre.resize_size == 256
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert Preprocessing(image_size=64, geometry="resize-crop").resize_size == 73
    assert Preprocessing(image_size=64).geometry == "squash" and Preprocessing(image_size=64).resize_size == 64
