"""Buckets: the output sizes engines are built for, parsed and turned into latent sizes exactly (pid_sdk/buckets.py)."""

import pytest

from pid_sdk.buckets import Bucket, trained_buckets
from pid_sdk.config import PRESETS, SIZES_4K
from pid_sdk.errors import InputError


def test_parse_and_name_round_trip():
    b = Bucket.parse("2304x1728")
    assert (b.height, b.width) == (2304, 1728) and b.name == "2304x1728" and Bucket.parse("64X96") == Bucket(64, 96)
    assert Bucket(64, 96) < Bucket(64, 128) < Bucket(96, 64)  # ordered height first
    assert {Bucket(64, 96): 1}[Bucket(64, 96)] == 1  # frozen: a dict key, and never changed in place
    with pytest.raises(AttributeError):
        b.height = 1


@pytest.mark.parametrize("text", ["2048", "2048x", "x2048", "ax2", "2x2x2", "", "2048*2048"])
def test_sizes_that_are_not_h_x_w_are_refused_with_the_form(text):
    with pytest.raises(InputError, match="Cannot read the size") as err:
        Bucket.parse(text)
    assert err.value.received == text and err.value.expected == "HEIGHTxWIDTH, e.g. 2048x2048"
    assert err.value.what == "Cannot read the size." and err.value.fix == "pass --size 2048x2048"


def test_latent_size_is_the_output_over_factor_times_scale():
    assert Bucket(2048, 1536).latent_size(8, 4) == (64, 48)
    assert all(type(v) is int for v in Bucket(64, 96).latent_size(8, 4))
    assert Bucket(4096, 2048).latent_size(16, 8) == (32, 16)
    with pytest.raises(InputError, match="not a whole number of latent cells") as err:
        Bucket(2048, 1540).latent_size(8, 4)
    assert err.value.what == "2048x1540 is not a whole number of latent cells." and err.value.received == "2048x1540"
    assert err.value.expected == "height and width multiples of 32 (latent factor 8 x 4)"
    assert err.value.fix == "round to 2048x1536"
    with pytest.raises(InputError):
        Bucket(2050, 2048).latent_size(8, 4)


def test_a_models_trained_buckets():
    assert trained_buckets(PRESETS["pid-2kto4k-v1.5"]) == tuple(Bucket(h, w) for h, w in SIZES_4K)
    assert trained_buckets(PRESETS["demo-flux1"]) == (Bucket(256, 256), Bucket(384, 384), Bucket(512, 512))
    assert trained_buckets(PRESETS["pid-2k"])[0] == Bucket(2048, 2048) and len(trained_buckets(PRESETS["pid-2k"])) == 5
