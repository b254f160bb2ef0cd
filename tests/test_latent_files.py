"""pid_sdk.latent_files: each format's metadata is judged before its data is read, and each refusal names the file,
what it held and the fix. Fast on purpose: scripts/mutation.py runs this file once per mutant."""

import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pid_sdk import latent_files
from pid_sdk.errors import InputError, PiDError
from pid_sdk.latent_files import read_latent_file


def z(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_safetensors_the_one_tensor_or_the_one_named_latent(tmp_path):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    save_file({"x": z(1, 16, 2, 2)}, one)
    save_file({"other": z(1, 16, 2, 2, seed=1), "latent": z(1, 16, 2, 2, seed=2)}, two)
    assert torch.equal(read_latent_file(one), z(1, 16, 2, 2))
    assert torch.equal(read_latent_file(two), z(1, 16, 2, 2, seed=2))


def test_several_tensors_none_named_latent_are_refused_with_their_names(tmp_path):
    path = tmp_path / "many.safetensors"
    save_file({"b": z(2), "a": z(2)}, path)
    with pytest.raises(InputError, match="holds 2 tensors and none is named 'latent'") as e:
        read_latent_file(path)
    assert e.value.received == ["a", "b"] and "name it" in e.value.fix
    torch.save({"b": z(2), "a": z(2), "note": "text"}, tmp_path / "many.pt")
    with pytest.raises(InputError, match="holds 2 tensors"):
        read_latent_file(tmp_path / "many.pt")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_every_float_dtype_reads(tmp_path, dtype):
    save_file({"latent": z(1, 4, 2, 2, dtype=dtype)}, tmp_path / "l.safetensors")
    got = read_latent_file(tmp_path / "l.safetensors")
    assert got.dtype == dtype and torch.equal(got, z(1, 4, 2, 2, dtype=dtype))


def test_integer_tensors_are_refused_by_their_header(tmp_path):
    save_file({"latent": torch.ones(1, 4, 2, 2, dtype=torch.int32)}, tmp_path / "i.safetensors")
    with pytest.raises(InputError, match="'latent' in i.safetensors is not floating point") as e:
        read_latent_file(tmp_path / "i.safetensors")
    assert e.value.received == "I32" and "z.float()" in e.value.fix


def test_the_element_bound_is_inclusive_and_counts_every_dimension(tmp_path, monkeypatch):
    monkeypatch.setattr(latent_files, "MAX_ELEMENTS", 64)
    save_file({"latent": z(1, 16, 2, 2)}, tmp_path / "at.safetensors")
    save_file({"latent": z(1, 16, 2, 3)}, tmp_path / "over.safetensors")
    assert read_latent_file(tmp_path / "at.safetensors").numel() == 64
    with pytest.raises(InputError, match="claims 96 values") as e:
        read_latent_file(tmp_path / "over.safetensors")
    assert e.value.received == "shape [1, 16, 2, 3]" and "at most 64 values" in e.value.expected


def test_more_than_eight_dimensions_are_refused(tmp_path):
    save_file({"latent": z(*[1] * 8)}, tmp_path / "eight.safetensors")
    save_file({"latent": z(*[1] * 9)}, tmp_path / "nine.safetensors")
    assert read_latent_file(tmp_path / "eight.safetensors").ndim == 8
    with pytest.raises(InputError, match="claims 1 values"):
        read_latent_file(tmp_path / "nine.safetensors")


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_of_either_header_version_and_order(tmp_path, version):
    array = np.asfortranarray(z(1, 4, 3, 2).numpy())
    path = tmp_path / "l.npy"
    with path.open("wb") as f:
        np.lib.format.write_array(f, array, version=version)
    assert torch.equal(read_latent_file(path), torch.from_numpy(np.ascontiguousarray(array)))


def test_npy_whose_header_lies_about_its_size_is_refused(tmp_path):
    path = tmp_path / "l.npy"
    np.save(path, z(1, 4, 2, 2).numpy())
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(InputError, match="truncated or its header lies") as e:
        read_latent_file(path)
    assert e.value.received == "a header claiming 64 bytes of data, 60 present"
    np.save(path, z(1, 4, 2, 2).numpy())
    path.write_bytes(path.read_bytes() + b"\0" * 4)
    with pytest.raises(InputError, match="68 present"):
        read_latent_file(path)


@pytest.mark.parametrize("array", [np.ones((1, 4, 2, 2), np.int16),
                                   np.zeros(4, dtype=[("a", "<f4"), ("b", "<f4")])])
def test_npy_that_is_not_plain_floats_is_refused(tmp_path, array):
    np.save(tmp_path / "l.npy", array)
    with pytest.raises(InputError, match="'array' in l.npy is not floating point"):
        read_latent_file(tmp_path / "l.npy")


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".PT"])
def test_pickles_load_weights_only(tmp_path, suffix):
    torch.save(z(1, 16, 2, 2), tmp_path / f"l{suffix}")
    assert torch.equal(read_latent_file(tmp_path / f"l{suffix}"), z(1, 16, 2, 2))


def test_a_pickle_that_holds_no_tensor_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "l.pt")
    with pytest.raises(InputError, match="l.pt does not hold a tensor") as e:
        read_latent_file(tmp_path / "l.pt")
    assert e.value.received == "list"


def test_sparse_tensors_in_a_file_are_refused(tmp_path):
    torch.save({"latent": z(1, 4, 2, 2).to_sparse()}, tmp_path / "l.pt")
    with pytest.raises(InputError, match="sparse or nested") as e:
        read_latent_file(tmp_path / "l.pt")
    assert "to_dense()" in e.value.fix


def test_images_are_sent_to_an_encoder_and_other_suffixes_to_safetensors(tmp_path):
    for name, fix in [("photo.PNG", "TinyAutoencoder"), ("latent.bin", "safetensors.torch.save_file"),
                      ("latent", "safetensors.torch.save_file")]:
        (tmp_path / name).write_bytes(b"\0" * 8)
        with pytest.raises(InputError, match="Unsupported latent file type") as e:
            read_latent_file(tmp_path / name)
        assert fix in e.value.fix and e.value.received == (name[name.index("."):] if "." in name else "(no suffix)")


@pytest.mark.parametrize("suffix", [".safetensors", ".npy"])
def test_damaged_bytes_are_corrupt_with_the_readers_reason(tmp_path, suffix):
    path = tmp_path / f"text{suffix}"
    path.write_bytes(b"\x93NUMPY\x01\x00garbage" if suffix == ".npy" else b"garbage bytes")
    with pytest.raises(InputError, match=f"Cannot read the text-embedding file .*text{suffix}.*truncated or corrupt"):
        read_latent_file(path, what="text-embedding")


def test_a_damaged_pickle_is_corrupt_not_code_to_trust(tmp_path):
    (tmp_path / "l.pt").write_bytes(b"garbage bytes")
    with pytest.raises(PiDError, match="l.pt: it is corrupt, truncated"):
        read_latent_file(tmp_path / "l.pt")


def test_a_folder_is_refused_before_any_reader_opens_it(tmp_path):
    (tmp_path / "l.safetensors").mkdir()
    with pytest.raises(InputError, match="not a regular file|is a folder|directory"):
        read_latent_file(tmp_path / "l.safetensors")


def _npy_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# Every refusal of the reader, rendered in full (what, received, expected, fix): the words a user acts on are part of
# the contract, so a change to any of them is a decision, not an accident. <d> is the file's folder.
PINNED = {
    "several.safetensors": (lambda p: save_file({"b": z(2), "a": z(2)}, p),
                            "<d>/several.safetensors holds 2 tensors and none is named 'latent'.\n"
                            "  received: ['a', 'b']\n"
                            "  expected: one tensor, or one named 'latent' (latent)\n"
                            "  fix: save only the latent, or name it: safetensors.torch.save_file({'latent': z, ...}, "
                            "path)"),
    "several.pt": (lambda p: torch.save({"b": z(2), "a": z(2)}, p),
                   "<d>/several.pt holds 2 tensors and none is named 'latent'.\n"
                   "  received: ['a', 'b']\n"
                   "  expected: one tensor, or one named 'latent' (latent)\n"
                   "  fix: save only the latent, or name it: safetensors.torch.save_file({'latent': z, ...}, path)"),
    "folder.pt": (lambda p: p.mkdir(),
                  "The latent file <d>/folder.pt is a folder, not a regular file.\n"
                  "  received: <d>/folder.pt\n"
                  "  expected: a regular latent file\n"
                  "  fix: pass the file itself"),
    "int.safetensors": (lambda p: save_file({"latent": torch.ones(2, dtype=torch.int32)}, p),
                        "The latent 'latent' in int.safetensors is not floating point.\n"
                        "  received: I32\n"
                        "  expected: float16, bfloat16, float32 or float64\n"
                        "  fix: save it with safetensors.torch.save_file({'latent': z}, path) with z.float()"),
    "nine.safetensors": (lambda p: save_file({"latent": z(*[1] * 9)}, p),
                         "The latent 'latent' in nine.safetensors claims 1 values.\n"
                         "  received: shape [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
                         "  expected: at most 268,435,456 values (a latent batch, not an image)\n"
                         "  fix: pass the latent the LDM produced; split very large batches over several files"),
    "int.npy": (lambda p: p.write_bytes(_npy_bytes(np.ones(2, np.int16))),
                "The latent 'array' in int.npy is not floating point.\n"
                "  received: int16\n"
                "  expected: float16, bfloat16, float32 or float64\n"
                "  fix: save it with safetensors.torch.save_file({'latent': z}, path) with z.float()"),
    "short.npy": (lambda p: p.write_bytes(_npy_bytes(np.ones(2, np.float32))[:-1]),
                  "The latent file short.npy is truncated or its header lies.\n"
                  "  received: a header claiming 8 bytes of data, 7 present\n"
                  "  expected: a complete .npy file\n"
                  "  fix: save it with safetensors.torch.save_file({'latent': z}, path)"),
    "list.pt": (lambda p: torch.save([1], p),
                "<d>/list.pt does not hold a tensor.\n"
                "  received: list\n"
                "  expected: a tensor\n"
                "  fix: save it with safetensors.torch.save_file({'latent': z}, path)"),
    "sparse.pt": (lambda p: torch.save(z(2, 2).to_sparse(), p),
                  "<d>/sparse.pt holds a sparse or nested tensor.\n"
                  "  received: torch.sparse_coo\n"
                  "  expected: a dense tensor\n"
                  "  fix: save the dense tensor: torch.save({'latent': z.to_dense()}, path)"),
    "int.pt": (lambda p: torch.save({"latent": torch.ones(2, dtype=torch.int64)}, p),
               "The latent 'tensor' in int.pt is not floating point.\n"
               "  received: torch.int64\n"
               "  expected: float16, bfloat16, float32 or float64\n"
               "  fix: save it with safetensors.torch.save_file({'latent': z}, path) with z.float()"),
    "photo.png": (lambda p: p.write_bytes(b"\x89PNG"),
                  "Unsupported latent file type.\n"
                  "  received: .png\n"
                  "  expected: .safetensors, .npy, .pt, .pth\n"
                  "  fix: PiD decodes latents, not images: encode the image with its latent space's VAE first (a "
                  "tiny one: pid_sdk.tae.TinyAutoencoder)"),
    "bad.safetensors": (lambda p: p.write_bytes(b"\x08\0\0\0\0\0\0\0{}"),
                        "Cannot read the latent file <d>/bad.safetensors: it is truncated or corrupt.\n"
                        "  received: SafetensorError: <the library's words>\n"
                        "  expected: a complete .safetensors / .pt / .npy file holding one tensor\n"
                        "  fix: save it with safetensors.torch.save_file({'latent': z}, path)"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_refusal_reads_as_pinned(tmp_path, name):
    make, expected = PINNED[name]
    make(tmp_path / name)
    with pytest.raises(InputError) as e:
        read_latent_file(tmp_path / name)
    parts = expected.split("<the library's words>")  # another library's message is not ours to pin
    assert re.fullmatch(".+".join(map(re.escape, parts)), str(e.value).replace(str(tmp_path), "<d>"))


def test_a_pickle_is_read_as_a_latent_file_with_its_own_consent(tmp_path, monkeypatch):
    """The pickle reader is told it reads a latent file, and the caller's consent (never more)."""
    from pid_sdk import checkpoints

    seen = []
    monkeypatch.setattr(checkpoints, "read_file", lambda p, **kw: seen.append(kw) or z(2))
    torch.save(z(2), tmp_path / "l.pt")
    read_latent_file(tmp_path / "l.pt", what="text-embedding")
    read_latent_file(tmp_path / "l.pt", trust_pickle=True)
    assert seen == [{"trust_pickle": False, "what": "text-embedding file"},
                    {"trust_pickle": True, "what": "latent file"}]


def test_npy_headers_are_read_within_a_bound_and_never_unpickled(tmp_path):
    header = {"descr": "<f4", "fortran_order": False, "shape": (2,), "pad": " " * 20_000}
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_2_0(buffer, header)
    (tmp_path / "big.npy").write_bytes(buffer.getvalue() + bytes(8))
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_latent_file(tmp_path / "big.npy")  # a 20 KB header is over the 10 000-byte bound
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not floating point"):
        read_latent_file(tmp_path / "obj.npy")


def test_a_pickled_dict_gives_its_latent_among_several(tmp_path):
    torch.save({"other": z(2), "latent": z(3, seed=1), "note": "text"}, tmp_path / "l.pt")
    assert torch.equal(read_latent_file(tmp_path / "l.pt"), z(3, seed=1))


def test_a_file_over_the_byte_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(latent_files, "MAX_FILE_BYTES", 64)
    save_file({"latent": z(1, 16, 2, 2)}, tmp_path / "l.safetensors")
    with pytest.raises(InputError, match="latent file"):
        read_latent_file(tmp_path / "l.safetensors")
