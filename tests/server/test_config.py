"""Configuration in-process: precedence and sources, limits from the engine, the [engine]
table, the generated docs table."""

from __future__ import annotations

import os

import pytest

from strata.server import config as c
from strata.storage.options import MAX_VALUE_SIZE, Options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_defaults_work_with_no_file_and_no_environment():
    cfg, sources = c.load(env={})
    assert cfg.data_dir == "./data" and cfg.grpc_listen == "127.0.0.1:7400"
    assert set(sources.values()) == {"default"}


def test_file_then_environment_then_flags(tmp_path):
    conf = tmp_path / "s.toml"
    conf.write_text('durability = "interval"\nmemtable_size = 1048576\nlog_level = "debug"\n')
    cfg, sources = c.load(str(conf), env={"STRATA_MEMTABLE_SIZE": "2097152",
                                          "STRATA_LOG_LEVEL": "warning"},
                          flags={"log_level": "error"})
    assert (cfg.durability, sources["durability"]) == ("interval", str(conf))
    assert (cfg.memtable_size, sources["memtable_size"]) == (2 << 20, "STRATA_MEMTABLE_SIZE")
    assert (cfg.log_level, sources["log_level"]) == ("error", "flag --log-level")


@pytest.mark.parametrize("text,match", [
    ("max_value_size = 99999999999\n", "max_value_size must be 0 .. "),
    ("max_key_size = 0\n", "max_key_size must be 1 .. "),
    ('durability = "sometimes"\n', "durability must be one of always, interval, none"),
    ("nonsense = 1\n", "unknown option 'nonsense'"),
    ('memtable_size = "big"\n', "is not a int"),
    ("[engine]\nl0_stop_trigger = 'x'\nno_such = 1\n", r"\[engine\]: unknown engine option"),
    ("[engine]\nmemtable_size = 1\n", r"set memtable_size at the top level"),
    ('tls_cert = "a.pem"\n', "tls_cert and tls_key go together"),
    ("ring_mode = 640\n", "ring_mode must be 0o600 .. 0o777"),  # decimal 640 = 0o1200
    ("ring_mode = 0o400\n", "ring_mode must be 0o600 .. 0o777 with owner read and write"),
    ('ring_mode = "rw"\n', "ring_mode from .*: 'rw' is not a FileMode"),
    ('ws_allowed_origins = "localhost:8000"\n', "ws_allowed_origins: 'localhost:8000' is not "
                                                 "an origin: write scheme://host"),
    ('ws_allowed_origins = "http://localhost:8000/"\n', "an origin has no path"),
    ('ws_allowed_origins = "https://a.example/app"\n', "an origin has no path"),
    ('ws_allowed_origins = "http://a.example,,http://b.example"\n', "an empty entry"),
    ('ws_allowed_origins = "http://a.example,"\n', "an empty entry"),
    ('ws_allowed_origins = "null"\n', "'null' is not an allowed origin"),
    ('ws_allowed_origins = "http://a.example:99999"\n', "the port must be a number"),
    ('ws_allowed_origins = "http://user@a.example"\n', "with no user"),
    ('ws_allowed_origins = "*.example.com"\n', "is not an origin"),
])
def test_bad_values_are_refused_with_what_and_why(tmp_path, text, match):
    conf = tmp_path / "s.toml"
    conf.write_text(text)
    with pytest.raises(c.ConfigError, match=match):
        c.load(str(conf), env={})


def test_ring_mode_is_octal_in_the_file_the_environment_and_the_output(tmp_path):
    conf = tmp_path / "s.toml"
    conf.write_text("ring_mode = 0o660\n")
    cfg, _ = c.load(str(conf), env={})
    assert cfg.ring_mode == 0o660 and "ring_mode = 0o660" in c.render(cfg, _)
    for raw in ("640", "0640", "0o640"):
        assert c.load(env={"STRATA_RING_MODE": raw})[0].ring_mode == 0o640
    assert c.load(env={})[0].ring_mode == 0o600


def test_ws_allowed_origins_from_file_environment_and_flag(tmp_path):
    assert c.parse_origins(c.load(env={})[0].ws_allowed_origins) == frozenset()
    conf = tmp_path / "s.toml"
    conf.write_text('ws_allowed_origins = "HTTP://LocalHost:80, https://dash.example:8443"\n')
    cfg, _ = c.load(str(conf), env={})
    # As browsers write the header: lower case, default port left out.
    assert c.parse_origins(cfg.ws_allowed_origins) == {"http://localhost",
                                                       "https://dash.example:8443"}
    env = {"STRATA_WS_ALLOWED_ORIGINS": "*"}
    cfg, sources = c.load(str(conf), env=env)
    assert c.parse_origins(cfg.ws_allowed_origins) == {"*"}
    assert sources["ws_allowed_origins"] == "STRATA_WS_ALLOWED_ORIGINS"
    cfg, sources = c.load(env=env, flags={"ws_allowed_origins": "http://[::1]:8000"})
    assert c.parse_origins(cfg.ws_allowed_origins) == {"http://[::1]:8000"}
    assert sources["ws_allowed_origins"] == "flag --ws-allowed-origins"


def test_limits_come_from_the_engine():
    """The proto and config once disagreed on the largest value: both now say what
    storage.options says, and the transport admits whatever a reload may allow."""
    assert c.grpc_message_limit(c.Config()) > MAX_VALUE_SIZE
    help_text = c.OPTIONS["max_value_size"][0]
    assert str(MAX_VALUE_SIZE) in help_text


def test_the_engine_table_reaches_the_engine(tmp_path):
    conf = tmp_path / "s.toml"
    conf.write_text('durability = "none"\n[engine]\nl0_compaction_trigger = 8\n'
                    "target_file_size = 1048576\n")
    cfg, sources = c.load(str(conf), env={})
    opts = c.engine_options(cfg)
    assert isinstance(opts, Options)
    assert (opts.durability, opts.l0_compaction_trigger, opts.target_file_size) == \
        ("none", 8, 1 << 20)
    rendered = c.render(cfg, sources)
    assert "[engine]" in rendered and "l0_compaction_trigger = 8" in rendered
    import tomllib
    assert tomllib.loads(rendered.replace("# ", "#"))["engine"]["target_file_size"] == 1 << 20


def test_every_option_documents_itself_and_the_docs_table_is_current():
    for name, (text, reload) in c.OPTIONS.items():
        assert text and isinstance(reload, bool), name
    with open(os.path.join(ROOT, "docs", "operations.md")) as f:
        doc = f.read()
    for row in c.markdown().splitlines():
        assert row in doc, f"docs/operations.md lacks the row {row!r}: regenerate it with " \
                           f"`strata config --markdown`"


def test_every_error_is_reported_at_once(tmp_path):
    conf = tmp_path / "s.toml"
    conf.write_text('max_key_size = 0\ndurabilty = "none"\nmemtable_size = "big"\n')
    with pytest.raises(c.ConfigError) as e:
        c.load(str(conf), env={"STRATA_RATE_LIMIT": "-1", "STRATA_REPLICATON": "sync"},
               flags={"replication": "bogus"})
    assert e.value.errors == [
        f"config file {conf}: unknown option 'durabilty' (did you mean durability?)",
        f"memtable_size from {conf}: 'big' is not a int",
        "unknown environment variable 'STRATA_REPLICATON' (did you mean STRATA_REPLICATION?)",
        "max_key_size must be 1 .. 65536, not 0",
        "rate_limit and rate_burst must not be negative",
        "replication must be one of async, quorum, sync, not 'bogus'",
    ]
    assert str(e.value) == "; ".join(e.value.errors)


@pytest.mark.parametrize("var,near", [
    ("STRATA_DURABILTY", "STRATA_DURABILITY"),
    ("STRATA_GRPC_LISTNE", "STRATA_GRPC_LISTEN"),
    ("STRATA_CONFG", "STRATA_CONFIG"),
    ("STRATA_ZZZZZZZZZZZZZZZZ", None),
])
def test_an_unknown_strata_variable_is_an_error_naming_the_closest(var, near):
    with pytest.raises(c.ConfigError) as e:
        c.load(env={var: "1"})
    (err,) = e.value.errors
    assert err.startswith(f"unknown environment variable {var!r}")
    assert (f"(did you mean {near}?)" in err) if near else "did you mean" not in err, err


def test_the_engine_table_is_not_taken_from_the_environment():
    with pytest.raises(c.ConfigError, match=r"STRATA_ENGINE: the \[engine\] table is set in the "
                                            r"config file only"):
        c.load(env={"STRATA_ENGINE": "{}"})


def test_variables_that_are_not_options_are_accepted():
    cfg, sources = c.load(env={v: "x" for v in c.OTHER_VARIABLES} | {"HOME": "/root"})
    assert set(sources.values()) == {"default"}
