"""The environment contract of vLLM's OpenVINO backend, parsed without OpenVINO installed."""

from __future__ import annotations

import pytest

from ovllm_engine.config import ConfigError, EngineConfig, parse_env, parse_ov_config


def test_defaults():
    settings = parse_env({})
    assert settings.kv_cache_space_gb == 4
    assert settings.kv_cache_precision is None and settings.quantized_weights is None
    assert settings.inference_threads is None


def test_values_are_read():
    settings = parse_env({"VLLM_OPENVINO_KVCACHE_SPACE": "12", "VLLM_OPENVINO_CPU_KV_CACHE_PRECISION": "U8",
                          "VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS": "ON", "OVLLM_INFERENCE_THREADS": "6"})
    assert (settings.kv_cache_space_gb, settings.kv_cache_precision, settings.quantized_weights,
            settings.inference_threads) == (12, "u8", True, 6)
    assert parse_env({"VLLM_OPENVINO_KV_CACHE_PRECISION": "bf16"}).kv_cache_precision == "bf16"
    for off in ("OFF", "0", "false"):
        assert parse_env({"VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS": off}).quantized_weights is False


def test_zero_space_means_four_with_a_warning(caplog):
    assert parse_env({"VLLM_OPENVINO_KVCACHE_SPACE": "0"}).kv_cache_space_gb == 4
    assert "VLLM_OPENVINO_KVCACHE_SPACE=0" in caplog.text


@pytest.mark.parametrize("name,value,accepted", [
    ("VLLM_OPENVINO_KVCACHE_SPACE", "-1", ">= 0"),
    ("VLLM_OPENVINO_KVCACHE_SPACE", "lots", "whole number"),
    ("VLLM_OPENVINO_KVCACHE_SPACE", "2.5", "whole number"),
    ("VLLM_OPENVINO_KVCACHE_SPACE", "nan", "whole number"),
    ("VLLM_OPENVINO_CPU_KV_CACHE_PRECISION", "fp8", "u8, f16, bf16, f32"),
    ("VLLM_OPENVINO_KV_CACHE_PRECISION", "int4", "u8, f16, bf16, f32"),
    ("VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS", "maybe", "ON, OFF"),
    ("OVLLM_INFERENCE_THREADS", "-2", ">= 0"),
])
def test_wrong_values_name_variable_value_and_accepted(name, value, accepted):
    with pytest.raises(ConfigError) as error:
        parse_env({name: value})
    message = str(error.value)
    assert name in message and repr(value) in message and accepted in message
    assert "\n" not in message


def test_precision_names_must_agree():
    with pytest.raises(ConfigError):
        parse_env({"VLLM_OPENVINO_CPU_KV_CACHE_PRECISION": "u8", "VLLM_OPENVINO_KV_CACHE_PRECISION": "f16"})


def test_ov_properties_layering():
    config = EngineConfig(model_path="/m", served_model_name="m", max_model_len=16, kv_cache_precision="u8",
                          inference_threads=4, ov_config=parse_ov_config('{"INFERENCE_PRECISION_HINT": "f32"}'))
    assert config.ov_properties() == {"KV_CACHE_PRECISION": "u8", "INFERENCE_NUM_THREADS": 4,
                                      "INFERENCE_PRECISION_HINT": "f32"}
    with pytest.raises(ConfigError, match="not JSON"):
        parse_ov_config("{bad")
    with pytest.raises(ConfigError, match="JSON object"):
        parse_ov_config("[1]")


def test_kv_space_must_hold_one_full_length_sequence(tmp_path):
    """As vLLM's OpenVINO backend: refuse to start when max_model_len tokens do not fit the KV cache."""
    import json

    from ovllm_engine.config import check_kv_space

    # 80 layers x 2 x 8 KV heads x 128 dims x 2 bytes = 320 KiB a token: 1 GB holds 3276 tokens
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 80, "num_attention_heads": 64,
                                                      "num_key_value_heads": 8, "hidden_size": 8192}))
    fits = EngineConfig(model_path=str(tmp_path), served_model_name="m", max_model_len=3276, kv_cache_space_gb=1,
                        kv_cache_precision="f16")
    check_kv_space(fits)
    too_long = EngineConfig(model_path=str(tmp_path), served_model_name="m", max_model_len=3277, kv_cache_space_gb=1,
                            kv_cache_precision="f16")
    with pytest.raises(ConfigError, match="holds 3276 tokens.*--max-model-len 3277"):
        check_kv_space(too_long)
    too_long.kv_cache_precision = "u8"  # half the bytes a token
    check_kv_space(too_long)


@pytest.mark.parametrize("config, elements", [
    ({"num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "hidden_size": 896},
     24 * 2 * 2 * 64),  # Qwen2.5-0.5B
    ({"n_layer": 12, "n_head": 12, "n_embd": 768}, 12 * 2 * 12 * 64),  # GPT-2
    ({"n_layer": 40, "n_head": 48, "n_embd": 6144, "multi_query": True}, 40 * 2 * 1 * 128),  # StarCoder
    ({"num_hidden_layers": 32, "num_attention_heads": 71, "hidden_size": 4544, "multi_query": True}, 32 * 2 * 64),
    ({"num_hidden_layers": 60, "num_attention_heads": 128, "num_kv_heads": 8, "hidden_size": 8192,
      "multi_query": True, "new_decoder_architecture": True}, 60 * 2 * 8 * 64),  # Falcon-40B
    ({"num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "hidden_size": 1152,
      "head_dim": 256}, 26 * 2 * 4 * 256),  # Gemma 3 1B: head_dim is not hidden / heads
    ({"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64,
      "layer_types": ["conv", "full_attention", "conv", "full_attention"]}, 2 * 2 * 2 * 16),  # LFM2
    ({"hidden_size": 64}, None),
])
def test_kv_bytes_per_token_reads_each_architectures_names(tmp_path, config, elements):
    """KV elements a token takes (layers x K and V x KV heads x head width), whatever the config calls them."""
    import json

    from ovllm_engine.config import kv_bytes_per_token

    (tmp_path / "config.json").write_text(json.dumps(config))
    assert kv_bytes_per_token(tmp_path, "f16") == (elements * 2 if elements else None)
