"""Settings (llmhost.config): every LLMHOST_* variable parsed, described, and named when malformed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmhost.config import Settings, describe_variables
from llmhost.errors import ConfigError


@pytest.mark.parametrize("name, value", [
    ("LLMHOST_MAX_QUEUE", "lots"),
    ("LLMHOST_KEEP_ALIVE", "5 minutes"),
    ("LLMHOST_MAX_MEMORY", "2 gigs"),
    ("LLMHOST_HOST", "127.0.0.1:99999"),
    ("LLMHOST_NUM_PARALLEL", "0"),
])
def test_malformed_variable_is_named(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_daemon_refuses_to_start_with_a_malformed_variable(tmp_path):
    env = {"LLMHOST_SOCKET": str(tmp_path / "s.sock"), "LLMHOST_MODELS": str(tmp_path / "m"),
           "LLMHOST_KEEP_ALIVE": "5 minutes", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "llmhost.daemon"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "LLMHOST_KEEP_ALIVE" in result.stderr and "Traceback" not in result.stderr


def test_every_variable_is_described():
    text = describe_variables()
    for name in ("LLMHOST_HOST", "LLMHOST_MODELS", "LLMHOST_SOCKET", "LLMHOST_KEEP_ALIVE",
                 "LLMHOST_NUM_THREADS", "LLMHOST_MAX_MEMORY", "LLMHOST_MAX_QUEUE"):
        assert name in text


@pytest.mark.parametrize("text, seconds", [("10m", 600), ("1h30m", 5400), ("-1", float("inf")), ("45", 45)])
def test_keep_alive_default_parses_durations(text, seconds):
    assert Settings.from_env({"LLMHOST_KEEP_ALIVE": text}).keep_alive == seconds


# ---- the KV cache and repacking ----------------------------------------------------------------------


def test_settings_default_to_an_f16_cache_and_automatic_repacking():
    settings = Settings.from_env({})
    assert (settings.kv_cache_type, settings.cpu_repack) == ("f16", "auto")
    assert Settings.from_env({"LLMHOST_KV_CACHE_TYPE": "Q8_0"}).kv_cache_type == "q8_0"


@pytest.mark.parametrize("value, mode", [("", "auto"), ("auto", "auto"), ("OFF", "off"), ("on", "on"),
                                         ("1", "on"), ("true", "on"), ("0", "off"), ("false", "off"),
                                         ("T", "on"), ("F", "off")])
def test_flash_attention_takes_auto_on_off_and_ollamas_booleans(value, mode):
    env = {"LLMHOST_FLASH_ATTENTION": value} if value else {}
    assert Settings.from_env(env).flash_attention == mode


@pytest.mark.parametrize("value, size", [("", -1), ("auto", -1), ("OFF", 0), ("0", 0), ("512MiB", 512 * 1024**2),
                                         ("2GiB", 2 * 1024**3), ("1000", 1000)])
def test_the_host_cache_for_parked_prompts_takes_auto_off_or_a_size(value, size):
    env = {"LLMHOST_KV_HOST_CACHE": value} if value else {}
    assert Settings.from_env(env).kv_host_cache == size


@pytest.mark.parametrize("name, value", [("LLMHOST_KV_CACHE_TYPE", "q5_1"), ("LLMHOST_CPU_REPACK", "maybe"),
                                         ("LLMHOST_FLASH_ATTENTION", "sometimes"), ("LLMHOST_KV_HOST_CACHE", "lots"),
                                         ("LLMHOST_KV_HOST_CACHE", "-5")])
def test_a_bad_setting_names_its_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


# ---- uploads -----------------------------------------------------------------------------------------


def test_upload_settings_default_to_a_minute_and_a_tebibyte():
    settings = Settings.from_env({})
    assert (settings.body_idle_timeout, settings.max_upload) == (60.0, 1 << 40)
    assert "LLMHOST_BODY_IDLE_TIMEOUT (default 60s)" in describe_variables()
    assert "LLMHOST_MAX_UPLOAD (default 1TiB)" in describe_variables()


@pytest.mark.parametrize("name, value", [
    pytest.param("LLMHOST_BODY_IDLE_TIMEOUT", "0", id="no time at all"),
    pytest.param("LLMHOST_BODY_IDLE_TIMEOUT", "-1", id="forever"),
    pytest.param("LLMHOST_BODY_IDLE_TIMEOUT", "a while", id="not a duration"),
    pytest.param("LLMHOST_MAX_UPLOAD", "lots", id="not a size"),
])
def test_malformed_upload_settings_are_refused(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


# ---- API keys ----------------------------------------------------------------------------------------

KEYS = ("sk-first-0123456789", "sk-second-abcdef")


@pytest.mark.parametrize("text, accepted", [
    pytest.param(" a1 , b2 ,", ("a1", "b2"), id="comma-list"),
    pytest.param("", (), id="off-by-default"),
])
def test_keys_from_the_variable(text, accepted):
    keys = Settings.from_env({"LLMHOST_API_KEY": text}).api_keys
    assert keys.keys == accepted and bool(keys) is bool(accepted)
    assert all(keys.accepts(k) for k in accepted) and not keys.accepts("") and not keys.accepts("a")


def test_keys_from_a_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# rotated monthly\nkey-one\n\n  key-two  \n")
    keys = Settings.from_env({"LLMHOST_API_KEY": f"@{path}"}).api_keys
    assert keys.keys == ("key-one", "key-two")


@pytest.mark.parametrize("text, message", [
    pytest.param("@/nonexistent/keys", "cannot read the key file", id="missing-file"),
    pytest.param("good-key,bad key", "printable ASCII without spaces", id="space"),
])
def test_bad_keys_are_refused_without_echoing_them(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        Settings.from_env({"LLMHOST_API_KEY": text})
    assert "good-key" not in str(info.value) and "bad key" not in str(info.value)


def test_settings_never_show_a_key():
    settings = Settings.from_env({"LLMHOST_API_KEY": ",".join(KEYS)})
    assert all(key not in repr(settings) and key not in str(settings.api_keys) for key in KEYS)
