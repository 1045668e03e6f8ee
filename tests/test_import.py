"""Tests of the import: times and the three formats (audit_formats),
atomic builds and the import and query commands (audit_import), and the
real-log checks (audit_real_logs).

Every fixture is written here, into a temporary folder per test.
"""

import contextlib
import gzip
import io
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
import unittest

import audit_dataset
import audit_formats
import audit_import
import audit_real_logs
import audit_seed
import audit_writer
import enhanced_audit_log_service
import runner
from audit_formats import AuditImportError, parse_time
from audit_import import import_files
from audit_query import INT64_MAX, INT64_MIN, Query
from tests import MODULES, using_dataset, write_dataset

T0 = 1688990079  # 2023-07-10T11:54:39Z


def ct_record(time="2023-07-10T11:54:39Z", name="GetUser", identity=None,
              resources=None, source="iam.amazonaws.com", **extra):
    """A CloudTrail record; identity defaults to an IAM user."""
    if identity is None:
        identity = {"type": "IAMUser", "principalId": "AIDA1",
                    "arn": "arn:aws:iam::123456789012:user/alice",
                    "accountId": "123456789012", "userName": "alice"}
    record = dict(extra, eventVersion="1.08", userIdentity=identity,
                  eventTime=time, eventSource=source, eventName=name)
    if resources is not None:
        record["resources"] = resources
    return record


def k8s_event(stage="ResponseComplete", verb="get", user="alice",
              ref=None, version="audit.k8s.io/v1", **times):
    event = {"kind": "Event", "apiVersion": version, "level": "Metadata",
             "auditID": "id-1", "stage": stage,
             "requestURI": "/api/v1/namespaces/default/pods/web",
             "verb": verb, "user": {"username": user}}
    if ref is not None:
        event["objectRef"] = ref
    if not times and version == "audit.k8s.io/v1":
        times = {"requestReceivedTimestamp": "2023-07-10T11:54:39.000001Z",
                 "stageTimestamp": "2023-07-10T11:54:40.123456Z"}
    event.update(times)
    return event


class TempDirTestCase(unittest.TestCase):

    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="audit-import-test-")
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name
        self.data_dir = os.path.join(self.tmp, "data")

    def write(self, name, content):
        """Write str or bytes content; lists become JSON lines."""
        path = os.path.join(self.tmp, name)
        if isinstance(content, list):
            content = "".join(json.dumps(r, ensure_ascii=False) + "\n"
                              for r in content)
        if isinstance(content, dict):
            content = json.dumps(content, ensure_ascii=False)
        if isinstance(content, str):
            content = content.encode("utf-8")
        if name.endswith(".gz"):
            content = gzip.compress(content)
        with open(path, "wb") as f:
            f.write(content)
        return path

    def rows(self, data_dir=None):
        """(id, created_at, actor_id, action, resource_type, resource_id)
        of every event, by id."""
        db_path = audit_dataset.resolve_paths(data_dir or self.data_dir)[1]
        conn = sqlite3.connect(db_path)
        try:
            return conn.execute(
                "SELECT id, created_at, actor_id, action, resource_type,"
                " resource_id FROM audit_events ORDER BY id").fetchall()
        finally:
            conn.close()

    def info(self):
        conn = sqlite3.connect(
            audit_dataset.resolve_paths(self.data_dir)[1])
        try:
            return conn.execute("SELECT anchor, seed, rows, source"
                                " FROM dataset_info").fetchall()
        finally:
            conn.close()

    def snapshot_dir(self, path):
        """Every file under path with its bytes."""
        found = {}
        for root, _, files in os.walk(path):
            for name in files:
                full = os.path.join(root, name)
                with open(full, "rb") as f:
                    found[os.path.relpath(full, path)] = f.read()
        return found


# ---------------------------------------------------------------- times

class ParseTimeTest(unittest.TestCase):

    def test_z_suffix_is_utc_on_every_python(self):
        self.assertEqual(parse_time("2023-07-10T11:54:39Z"), T0)
        self.assertEqual(parse_time("2023-07-10t11:54:39z"), T0)

    def test_offsets_with_and_without_colon(self):
        self.assertEqual(parse_time("2023-07-10T13:54:39+02:00"), T0)
        self.assertEqual(parse_time("2023-07-10T13:54:39+0200"), T0)
        self.assertEqual(parse_time("2023-07-10T13:54:39+02"), T0)
        self.assertEqual(parse_time("2023-07-10T06:24:39-05:30"), T0)

    def test_space_instead_of_t(self):
        self.assertEqual(parse_time("2023-07-10 11:54:39Z"), T0)

    def test_fractions_up_to_nine_digits_round_down(self):
        self.assertEqual(parse_time("2023-07-10T11:54:39.999999999Z"), T0)
        self.assertEqual(parse_time("2023-07-10T11:54:39.5Z"), T0)

    def test_ten_fraction_digits_are_refused(self):
        with self.assertRaisesRegex(AuditImportError,
                                    r"fraction of 10 digits; at most 9"):
            parse_time("2023-07-10T11:54:39.1234567890Z")

    def test_time_without_zone_is_refused_naming_it(self):
        with self.assertRaisesRegex(
                AuditImportError,
                r"time '2022-05-07T12:55:53' has no time zone"):
            parse_time("2022-05-07T12:55:53")

    def test_time_without_zone_is_utc_when_assumed(self):
        self.assertEqual(parse_time("2023-07-10T11:54:39", assume_utc=True),
                         T0)

    def test_minutes_without_seconds(self):
        self.assertEqual(parse_time("2023-07-10T11:54Z"), T0 - 39)

    def test_before_the_epoch_counts_back(self):
        self.assertEqual(parse_time("1969-12-31T23:59:59.5Z"), -1)

    def test_garbage_and_out_of_range_values_are_named(self):
        with self.assertRaisesRegex(AuditImportError,
                                    r"'yesterday' is not an ISO 8601"):
            parse_time("yesterday")
        with self.assertRaisesRegex(AuditImportError,
                                    r"'2023-13-01T00:00:00Z' is out of"):
            parse_time("2023-13-01T00:00:00Z")
        with self.assertRaisesRegex(AuditImportError, r"offset out of"):
            parse_time("2023-01-01T00:00:00+24:00")
        with self.assertRaisesRegex(AuditImportError, r"got 17"):
            parse_time(17)

    def test_errors_are_dataset_and_value_errors(self):
        self.assertTrue(issubclass(AuditImportError,
                                   audit_dataset.DatasetError))
        self.assertTrue(issubclass(AuditImportError, ValueError))

    def test_query_times_take_unix_seconds_or_iso(self):
        self.assertEqual(audit_formats.parse_query_time("-5"), -5)
        self.assertEqual(audit_formats.parse_query_time(str(T0)), T0)
        self.assertEqual(
            audit_formats.parse_query_time("2023-07-10T11:54:39Z"), T0)


# ---------------------------------------------------------------- cloudtrail

class CloudTrailTest(TempDirTestCase):

    def import_records(self, records, name="ct.json", **kwargs):
        path = self.write(name, {"Records": records})
        return import_files([path], "cloudtrail", data_dir=self.data_dir,
                            **kwargs)

    def test_actor_falls_back_through_the_identity_fields(self):
        records = [
            ct_record(identity={"arn": "arn:a", "userName": "u"}),
            ct_record(identity={"userName": "u", "principalId": "p"}),
            ct_record(identity={"principalId": "p", "invokedBy": "i"}),
            ct_record(identity={"invokedBy": "ec2.amazonaws.com",
                                "accountId": "123"}),
            ct_record(identity={"type": "AWSAccount", "accountId": "abc"}),
            ct_record(identity={"arn": "", "userName": "u2"}),
        ]
        self.import_records(records)
        self.assertEqual([r[2] for r in self.rows()],
                         ["arn:a", "u", "p", "ec2.amazonaws.com", "abc",
                          "u2"])

    def test_missing_actor_is_empty_text(self):
        record = ct_record()
        del record["userIdentity"]
        self.import_records([record, ct_record(identity={})])
        self.assertEqual([r[2] for r in self.rows()], ["", ""])

    def test_all_digit_account_id_is_stored_as_an_int(self):
        self.import_records([ct_record(identity={"accountId": "1234"})])
        self.assertEqual(self.rows()[0][2], 1234)

    def test_no_resources_falls_back_to_event_source(self):
        self.import_records([ct_record(source="s3.amazonaws.com")])
        self.assertEqual(self.rows()[0][4:], ("s3.amazonaws.com", ""))

    def test_several_resources_use_the_first_with_a_type(self):
        resources = [{"accountId": "1", "ARN": "arn:untyped"},
                     {"type": "AWS::S3::Bucket", "ARN": "arn:bucket"},
                     {"type": "AWS::S3::Object", "ARN": "arn:object"}]
        self.import_records([ct_record(resources=resources)])
        self.assertEqual(self.rows()[0][4:], ("AWS::S3::Bucket",
                                              "arn:bucket"))

    def test_resources_without_type_keep_the_arn(self):
        resources = [{"accountId": "1", "ARN": "arn:param"}]
        self.import_records([ct_record(resources=resources,
                                       source="ssm.amazonaws.com")])
        self.assertEqual(self.rows()[0][4:], ("ssm.amazonaws.com",
                                              "arn:param"))

    def test_ids_follow_time_then_input_order(self):
        records = [ct_record(time="2023-07-10T11:54:40Z", name="b1"),
                   ct_record(time="2023-07-10T11:54:39Z", name="a1"),
                   ct_record(time="2023-07-10T11:54:40Z", name="b2"),
                   ct_record(time="2023-07-10T11:54:39Z", name="a2"),
                   ct_record(time="2023-07-10T11:54:40Z", name="b3")]
        self.import_records(records)
        self.assertEqual([(r[0], r[1], r[3]) for r in self.rows()],
                         [(1, T0, "a1"), (2, T0, "a2"), (3, T0 + 1, "b1"),
                          (4, T0 + 1, "b2"), (5, T0 + 1, "b3")])

    def test_nine_digit_fractions_and_offsets_in_event_time(self):
        self.import_records([
            ct_record(time="2023-07-10T11:54:39.123456789Z"),
            ct_record(time="2023-07-10 13:54:39.5+02:00")])
        self.assertEqual([r[1] for r in self.rows()], [T0, T0])

    def test_time_without_zone_names_file_record_field_and_value(self):
        path = self.write("ct.json", {"Records": [
            ct_record(), ct_record(time="2023-07-10T11:54:39")]})
        with self.assertRaisesRegex(
                AuditImportError,
                r"ct\.json: record 2: field eventTime: time"
                r" '2023-07-10T11:54:39' has no time zone"):
            import_files([path], "cloudtrail", data_dir=self.data_dir)
        import_files([path], "cloudtrail", data_dir=self.data_dir,
                     assume_utc=True)
        self.assertEqual(len(self.rows()), 2)

    def test_unicode_names_survive(self):
        identity = {"userName": "Zoë 日本"}
        self.import_records([ct_record(identity=identity,
                                       name="Créer")])
        self.assertEqual(self.rows()[0][2:4], ("Zoë 日本", "Créer"))

    def test_gzip_delivery_file(self):
        path = self.write("ct.json.gz", {"Records": [ct_record()] * 3})
        result = import_files([path], "cloudtrail", data_dir=self.data_dir)
        self.assertEqual(result.events, 3)

    def test_json_lines_of_single_records_and_of_deliveries(self):
        path = self.write("ct.jsonl", [ct_record(name="one"),
                                       {"Records": [ct_record(name="two"),
                                                    ct_record(name="3")]}])
        import_files([path], "cloudtrail", data_dir=self.data_dir)
        self.assertEqual([r[3] for r in self.rows()], ["one", "two", "3"])

    def test_pretty_printed_delivery_file(self):
        path = self.write("ct.json", json.dumps(
            {"Records": [ct_record(), ct_record()]}, indent=2))
        self.assertEqual(import_files([path], "cloudtrail",
                                      data_dir=self.data_dir).events, 2)

    def test_malformed_line_names_file_and_line(self):
        path = self.write("ct.jsonl", json.dumps(ct_record()) + "\n"
                          + json.dumps(ct_record()) + "\n{not json\n")
        with self.assertRaisesRegex(AuditImportError,
                                    r"ct\.jsonl: line 3: invalid JSON"):
            import_files([path], "cloudtrail", data_dir=self.data_dir)

    def test_nan_in_a_record_is_refused_as_not_json(self):
        path = self.write("ct.json", '{"Records": [{"eventTime":'
                          ' "2023-07-10T12:00:00Z", "eventName": "X",'
                          ' "extra": NaN}]}')
        with self.assertRaisesRegex(AuditImportError,
                                    r"ct\.json: .*NaN is not JSON"):
            import_files([path], "cloudtrail", data_dir=self.data_dir)
        self.assertFalse(os.path.exists(self.data_dir))

    def test_a_number_too_large_for_a_float_is_refused(self):
        path = self.write("ct.json", '{"Records": [{"eventTime":'
                          ' "2023-07-10T12:00:00Z", "eventName": "X",'
                          ' "extra": 1e400}]}')
        with self.assertRaisesRegex(AuditImportError,
                                    r"1e400 is too large for a float"):
            import_files([path], "cloudtrail", data_dir=self.data_dir)
        self.assertFalse(os.path.exists(self.data_dir))

    def test_a_lone_surrogate_in_the_payload_is_kept_and_printable(self):
        record = ct_record()
        record["note"] = "\ud800"
        path = self.write("ct.json", json.dumps({"Records": [record]}))
        import_files([path], "cloudtrail", data_dir=self.data_dir)
        with using_dataset(self.data_dir):
            event = enhanced_audit_log_service.query_events(
                Query(0, 2 ** 40))[0]
        self.assertEqual(event["payload"], record)
        line = audit_import._json_line(event)
        line.encode("utf-8")  # would raise for a raw lone surrogate
        self.assertEqual(json.loads(line), event)

    def test_a_lone_surrogate_in_a_column_is_named_not_a_crash(self):
        for field, record in (
                ("eventName", ct_record(name="Get\ud800User")),
                ("userIdentity.arn", ct_record(identity={
                    "arn": "arn:aws:iam::1:user/\udcff"}))):
            with self.subTest(field=field):
                path = self.write("ct.json", json.dumps({"Records": [record]}))
                with self.assertRaisesRegex(
                        AuditImportError,
                        rf"record 1: field {re.escape(field)}: .* lone"
                        " surrogate"):
                    import_files([path], "cloudtrail",
                                 data_dir=self.data_dir)
                self.assertFalse(os.path.exists(self.data_dir))

    def test_malformed_delivery_file_names_line_and_column(self):
        path = self.write("ct.json", '{"Records": [\n{"eventTime": }\n]}')
        with self.assertRaisesRegex(AuditImportError,
                                    r"ct\.json: invalid JSON: .*line 2"):
            import_files([path], "cloudtrail", data_dir=self.data_dir)

    def test_record_that_is_not_an_object_is_named(self):
        path = self.write("ct.json", {"Records": [ct_record(), [1, 2]]})
        with self.assertRaisesRegex(
                AuditImportError,
                r"record 2: expected a JSON object, got \[1, 2\]"):
            import_files([path], "cloudtrail", data_dir=self.data_dir)

    def test_empty_file_imports_no_events(self):
        path = self.write("empty.json", "")
        result = import_files([path], "cloudtrail", data_dir=self.data_dir)
        self.assertEqual((result.events, result.total), (0, 0))
        self.assertEqual(self.rows(), [])
        self.assertEqual(self.info(), [(0, None, 0, "import:cloudtrail")])

    def test_dataset_info_holds_newest_time_and_source(self):
        self.import_records([ct_record(time="2023-07-10T11:54:41Z"),
                             ct_record()])
        self.assertEqual(self.info(),
                         [(T0 + 2, None, 2, "import:cloudtrail")])


# ---------------------------------------------------------------- k8s

class KubernetesTest(TempDirTestCase):

    def import_events(self, events, **kwargs):
        path = self.write("audit.log", events)
        return import_files([path], "k8s", data_dir=self.data_dir,
                            **kwargs)

    def test_v1_uses_stage_timestamp(self):
        ref = {"resource": "pods", "namespace": "default", "name": "web"}
        self.import_events([k8s_event(ref=ref)])
        self.assertEqual(self.rows()[0][1:],
                         (T0 + 1, "alice", "get", "pods", "default/web"))

    def test_request_received_when_no_stage_timestamp(self):
        self.import_events([k8s_event(
            requestReceivedTimestamp="2023-07-10T11:54:39.123456789Z")])
        self.assertEqual(self.rows()[0][1], T0)

    def test_v1beta1_uses_timestamp(self):
        self.import_events([k8s_event(version="audit.k8s.io/v1beta1",
                                      timestamp="2023-07-10T11:54:39Z")])
        self.assertEqual(self.rows()[0][1], T0)

    def test_each_stage_is_an_event_of_its_own(self):
        self.import_events([
            k8s_event(stage="RequestReceived",
                      stageTimestamp="2023-07-10T11:54:39Z"),
            k8s_event(stage="ResponseComplete",
                      stageTimestamp="2023-07-10T11:54:39Z")])
        payloads = self.query_payloads()
        self.assertEqual([p["stage"] for p in payloads],
                         ["ResponseComplete", "RequestReceived"])

    def query_payloads(self):
        with using_dataset(self.data_dir):
            return [e["payload"] for e in MODULES[0].query_events(
                Query(INT64_MIN, INT64_MAX))]

    def test_subresource_cluster_scope_and_collections(self):
        self.import_events([
            k8s_event(ref={"resource": "pods", "subresource": "log",
                           "namespace": "ns", "name": "web"}),
            k8s_event(ref={"resource": "nodes", "name": "node-1"}),
            k8s_event(verb="list", ref={"resource": "pods",
                                        "namespace": "ns"}),
            k8s_event(verb="list", ref={"resource": "namespaces"})])
        self.assertEqual([r[4:] for r in self.rows()],
                         [("pods/log", "ns/web"), ("nodes", "node-1"),
                          ("pods", "ns/"), ("namespaces", "")])

    def test_no_object_ref_uses_the_request_uri(self):
        event = k8s_event()
        event["requestURI"] = "/healthz"
        self.import_events([event])
        self.assertEqual(self.rows()[0][4:], ("", "/healthz"))

    def test_missing_user_is_empty_text(self):
        event = k8s_event()
        del event["user"]
        self.import_events([event])
        self.assertEqual(self.rows()[0][2], "")

    def test_other_api_version_is_refused(self):
        with self.assertRaisesRegex(
                AuditImportError,
                r"audit\.log: line 1: field apiVersion: expected"
                r" audit\.k8s\.io/v1 or audit\.k8s\.io/v1beta1, got 'v2'"):
            self.import_events([k8s_event(version="v2")])

    def test_event_with_no_time_is_refused(self):
        event = k8s_event(version="audit.k8s.io/v1beta1")
        with self.assertRaisesRegex(AuditImportError,
                                    r"line 1: field stageTimestamp:"
                                    r" missing; every event needs a time"):
            self.import_events([event])


# ---------------------------------------------------------------- jsonl

M365 = {"time": "CreationTime", "actor": "UserId", "action": "Operation",
        "resource_type": "Workload", "resource_id": "ObjectId"}


def m365(time="2022-05-07T12:55:53", user="piet@example.com",
         operation="UserLoggedIn", **extra):
    return dict(extra, CreationTime=time, UserId=user, Operation=operation,
                Workload="AzureActiveDirectory", ObjectId="obj-1")


class JsonLinesTest(TempDirTestCase):

    def import_lines(self, lines, fields=M365, **kwargs):
        path = self.write("log.jsonl", lines)
        return import_files([path], "jsonl", data_dir=self.data_dir,
                            fields=fields, **kwargs)

    def test_mapped_fields_with_assumed_utc(self):
        self.import_lines([m365()], assume_utc=True)
        self.assertEqual(self.rows()[0][1:],
                         (1651928153, "piet@example.com", "UserLoggedIn",
                          "AzureActiveDirectory", "obj-1"))

    def test_time_without_zone_is_refused_by_default(self):
        with self.assertRaisesRegex(
                AuditImportError,
                r"log\.jsonl: line 1: field CreationTime: time"
                r" '2022-05-07T12:55:53' has no time zone"):
            self.import_lines([m365()])

    def test_time_mapping_is_required(self):
        with self.assertRaisesRegex(AuditImportError,
                                    r"jsonl needs --field time=PATH"):
            self.import_lines([m365()], fields={"actor": "UserId"})

    def test_dotted_paths_and_list_indexes(self):
        line = {"t": 1688990079.9, "who": {"name": "bob"},
                "res": [{"kind": "bucket", "id": "b-1"}], "op": "put"}
        self.import_lines([line], fields={
            "time": "t", "actor": "who.name", "action": "op",
            "resource_type": "res.0.kind", "resource_id": "res.0.id"})
        self.assertEqual(self.rows()[0][1:],
                         (T0, "bob", "put", "bucket", "b-1"))

    def test_mapping_that_matches_no_record_is_refused(self):
        with self.assertRaisesRegex(AuditImportError,
                                    r"no record has the field\(s\)"
                                    r" actor=UserID"):
            self.import_lines([m365()], fields=dict(M365, actor="UserID"),
                              assume_utc=True)

    def test_bad_field_spec_is_named(self):
        with self.assertRaisesRegex(AuditImportError,
                                    r"--field 'who=x': expected NAME="):
            audit_formats.parse_field_spec("who=x")

    def test_numbers_and_booleans_in_text_fields_become_json_text(self):
        self.import_lines([{"t": T0, "a": 5, "rt": True, "ri": None}],
                          fields={"time": "t", "action": "a",
                                  "resource_type": "rt",
                                  "resource_id": "ri"})
        self.assertEqual(self.rows()[0][3:], ("5", "true", ""))

    def test_object_in_a_text_field_is_refused(self):
        with self.assertRaisesRegex(AuditImportError,
                                    r"line 1: field a: expected text or a"
                                    r" number, got \{'x': 1\}"):
            self.import_lines([{"t": T0, "a": {"x": 1}}],
                              fields={"time": "t", "action": "a"})

    def test_canonical_digit_actors_become_ints(self):
        self.import_lines([{"t": T0, "u": "12345"}, {"t": T0, "u": 678},
                           {"t": T0, "u": "-9"}],
                          fields={"time": "t", "actor": "u"})
        self.assertEqual([r[2] for r in self.rows()], [12345, 678, -9])

    def test_number_like_actor_sqlite_would_rewrite_is_refused(self):
        for value, stored in (("007", "7"), ("1e3", "1000"),
                              (" 12", "12")):
            with self.subTest(value=value):
                with self.assertRaisesRegex(
                        AuditImportError,
                        rf"line 2: field u: actor {value!r} would be"
                        rf" stored as {stored}"):
                    self.import_lines([{"t": T0, "u": "ok"},
                                       {"t": T0, "u": value}],
                                      fields={"time": "t", "actor": "u"})

    def test_numeric_text_that_sqlite_keeps_is_kept(self):
        self.import_lines([{"t": T0, "u": "0x10"}, {"t": T0, "u": "1_000"}],
                          fields={"time": "t", "actor": "u"})
        self.assertEqual([r[2] for r in self.rows()], ["0x10", "1_000"])

    def test_malformed_and_non_object_lines(self):
        path = self.write("log.jsonl", '{"t": 1}\n\n[1]\n')
        with self.assertRaisesRegex(AuditImportError,
                                    r"log\.jsonl: line 3: expected a JSON"
                                    r" object, got \[1\]"):
            import_files([path], "jsonl", data_dir=self.data_dir,
                         fields={"time": "t"})

    def test_invalid_utf8_names_the_line_and_offset(self):
        path = self.write("log.jsonl", b'{"t": 1}\n{"t": "\xff"}\n')
        with self.assertRaisesRegex(AuditImportError,
                                    r"line 2: not UTF-8 at byte offset 16"):
            import_files([path], "jsonl", data_dir=self.data_dir,
                         fields={"time": "t"})

    def test_last_line_without_newline_and_blank_lines(self):
        path = self.write("log.jsonl", '\n{"t": 1}\n\n{"t": 2}')
        result = import_files([path], "jsonl", data_dir=self.data_dir,
                              fields={"time": "t"})
        self.assertEqual(result.events, 2)


# ---------------------------------------------------------------- datasets

class DatasetBuildTest(TempDirTestCase):

    def ct_file(self, name, *times):
        return self.write(name, {"Records": [
            ct_record(time=t, name=f"{name}-{i}")
            for i, t in enumerate(times)]})

    def test_schema_is_the_seeded_one(self):
        import_files([self.ct_file("a.json", "2023-07-10T11:54:39Z")],
                     "cloudtrail", data_dir=self.data_dir)
        seeded = os.path.join(self.tmp, "seeded")
        audit_seed.seed_dataset(seeded, rows=3, progress=False)

        def schema(data_dir):
            conn = sqlite3.connect(audit_dataset.resolve_paths(data_dir)[1])
            try:
                return conn.execute(
                    "SELECT type, name, sql FROM sqlite_master"
                    " ORDER BY name").fetchall()
            finally:
                conn.close()
        self.assertEqual(schema(self.data_dir), schema(seeded))

    def test_existing_dataset_is_not_overwritten(self):
        path = self.ct_file("a.json", "2023-07-10T11:54:39Z")
        import_files([path], "cloudtrail", data_dir=self.data_dir)
        before = self.snapshot_dir(self.data_dir)
        with self.assertRaisesRegex(AuditImportError,
                                    r"a dataset already exists in .*data;"
                                    r" use --replace"):
            import_files([path], "cloudtrail", data_dir=self.data_dir)
        self.assertEqual(self.snapshot_dir(self.data_dir), before)

    def test_replace_overwrites(self):
        import_files([self.ct_file("a.json", "2023-07-10T11:54:39Z")],
                     "cloudtrail", data_dir=self.data_dir)
        import_files([self.ct_file("b.json", "2023-07-10T11:54:40Z",
                                   "2023-07-10T11:54:41Z")],
                     "cloudtrail", data_dir=self.data_dir, mode="replace")
        self.assertEqual([r[3] for r in self.rows()],
                         ["b.json-0", "b.json-1"])
        self.assertFalse(os.path.exists(os.path.join(
            self.data_dir, audit_seed.SEED_MARKER_NAME)))

    def test_append_adds_after_existing_ids(self):
        import_files([self.ct_file("a.json", "2023-07-10T11:54:40Z")],
                     "cloudtrail", data_dir=self.data_dir)
        result = import_files(
            [self.ct_file("b.json", "2023-07-10T11:54:41Z",
                          "2023-07-10T11:54:39Z")],
            "cloudtrail", data_dir=self.data_dir, mode="append")
        self.assertEqual((result.events, result.total), (2, 3))
        self.assertEqual([(r[0], r[1], r[3]) for r in self.rows()],
                         [(1, T0 + 1, "a.json-0"), (2, T0, "b.json-1"),
                          (3, T0 + 2, "b.json-0")])
        self.assertEqual(self.info(),
                         [(T0 + 2, None, 3, "import:cloudtrail")])
        with using_dataset(self.data_dir):
            for module in MODULES:
                events = module.query_events(Query(INT64_MIN, INT64_MAX))
                self.assertEqual([e["payload"]["eventName"]
                                  for e in events],
                                 ["b.json-0", "a.json-0", "b.json-1"])

    def test_append_of_another_format_joins_the_sources(self):
        import_files([self.ct_file("a.json", "2023-07-10T11:54:40Z")],
                     "cloudtrail", data_dir=self.data_dir)
        path = self.write("k.log", [k8s_event()])
        import_files([path], "k8s", data_dir=self.data_dir, mode="append")
        self.assertEqual(self.info()[0][3], "import:cloudtrail+import:k8s")

    def test_append_to_nothing_creates(self):
        import_files([self.ct_file("a.json", "2023-07-10T11:54:40Z")],
                     "cloudtrail", data_dir=self.data_dir, mode="append")
        self.assertEqual(len(self.rows()), 1)

    def test_append_keeps_ids_of_a_dataset_made_elsewhere(self):
        write_dataset(self.data_dir, [
            {"id": 7, "created_at": T0, "actor_id": 3, "action": "LOGIN",
             "resource_type": "USER", "resource_id": "USER-1",
             "payload": {"n": 1}}])
        import_files([self.ct_file("a.json", "2023-07-10T11:54:39Z")],
                     "cloudtrail", data_dir=self.data_dir, mode="append")
        self.assertEqual([(r[0], r[2]) for r in self.rows()],
                         [(7, 3), (8, "arn:aws:iam::123456789012:user/alice")])
        with using_dataset(self.data_dir):
            for module in MODULES:
                events = module.query_events(Query(T0, T0))
                self.assertEqual([e["id"] for e in events], [8, 7])
                self.assertEqual(events[1]["payload"], {"n": 1})

    def test_failed_import_into_a_new_folder_leaves_nothing(self):
        good = self.ct_file("a.json", "2023-07-10T11:54:39Z")
        bad = self.write("b.jsonl", json.dumps(ct_record()) + "\n{oops\n")
        with self.assertRaisesRegex(AuditImportError,
                                    r"b\.jsonl: line 2: invalid JSON"):
            import_files([good, bad], "cloudtrail", data_dir=self.data_dir)
        self.assertFalse(os.path.exists(self.data_dir))

    def test_failed_import_into_an_existing_folder_leaves_no_files(self):
        os.makedirs(self.data_dir)
        bad = self.write("b.jsonl", "{oops\n")
        with self.assertRaises(AuditImportError):
            import_files([bad], "cloudtrail", data_dir=self.data_dir)
        self.assertEqual(set(os.listdir(self.data_dir)) - {
            audit_seed.SEED_LOCK_NAME, audit_writer.WRITE_LOCK_NAME}, set())

    def test_failed_replace_and_append_keep_the_old_dataset(self):
        import_files([self.ct_file("a.json", "2023-07-10T11:54:39Z")],
                     "cloudtrail", data_dir=self.data_dir)
        before = self.snapshot_dir(self.data_dir)
        bad = self.write("b.json", {"Records": [
            ct_record(), ct_record(time="2023-07-10T11:54:39")]})
        for mode in ("replace", "append"):
            with self.subTest(mode=mode):
                with self.assertRaisesRegex(AuditImportError,
                                            r"b\.json: record 2"):
                    import_files([bad], "cloudtrail",
                                 data_dir=self.data_dir, mode=mode)
                self.assertEqual(self.snapshot_dir(self.data_dir), before)

    def test_missing_input_file_is_named(self):
        missing = os.path.join(self.tmp, "nope.json")
        with self.assertRaisesRegex(AuditImportError,
                                    r"nope\.json: cannot read"):
            import_files([missing], "cloudtrail", data_dir=self.data_dir)
        self.assertFalse(os.path.exists(self.data_dir))


# ---------------------------------------------------------------- queries

class QueryImportedTest(TempDirTestCase):

    def setUp(self):
        super().setUp()
        self.records = [
            ct_record(identity={"userName": "Alice"}, name="A"),
            ct_record(identity={"userName": "alice"}, name="B",
                      resources=[{"type": "AWS::S3::Bucket",
                                  "ARN": "arn:aws:s3:::données"}]),
            ct_record(identity={"userName": "Zoë 日本"}, name="Créer",
                      time="2023-07-10T11:54:40Z"),
            ct_record(identity={"accountId": "42"}, name="D"),
        ]
        path = self.write("ct.json", {"Records": self.records})
        import_files([path], "cloudtrail", data_dir=self.data_dir)

    def query(self, **filters):
        """Results of both modules, checked equal; the payloads."""
        results = []
        with using_dataset(self.data_dir):
            for module in MODULES:
                results.append(module.query_events(
                    Query(INT64_MIN, INT64_MAX, **filters)))
        self.assertEqual(results[0], results[1])
        return [e["payload"] for e in results[0]]

    def test_payloads_equal_the_source_records(self):
        self.assertEqual(self.query(),
                         [self.records[2], self.records[3],
                          self.records[1], self.records[0]])

    def test_actor_filter_is_exact_and_case_sensitive(self):
        self.assertEqual(self.query(actor_id="alice"), [self.records[1]])
        self.assertEqual(self.query(actor_id="Alice"), [self.records[0]])
        self.assertEqual(self.query(actor_id="ALICE"), [])
        self.assertEqual(self.query(actor_id="alic"), [])

    def test_non_ascii_filter_values(self):
        self.assertEqual(self.query(actor_id="Zoë 日本"), [self.records[2]])
        self.assertEqual(self.query(action="Créer"), [self.records[2]])
        self.assertEqual(self.query(resource_id="arn:aws:s3:::données"),
                         [self.records[1]])
        self.assertEqual(self.query(actor_id="Zoe 日本"), [])

    def test_digit_actor_matches_as_int_only(self):
        self.assertEqual(self.query(actor_id=42), [self.records[3]])
        self.assertEqual(self.query(actor_id="42"), [])

    def test_payload_with_a_lone_surrogate_round_trips(self):
        record = ct_record(name="S", note="\ud800")
        path = self.write("s.json", json.dumps({"Records": [record]}))
        import_files([path], "cloudtrail", data_dir=self.data_dir,
                     mode="replace")
        self.assertEqual(self.query(), [record])


# ---------------------------------------------------------------- commands

class CommandTest(TempDirTestCase):

    def run_cli(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            code = runner.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def import_sample(self):
        path = self.write("ct.json", {"Records": [
            ct_record(identity={"userName": "bob"}, name="A"),
            ct_record(identity={"accountId": "77"}, name="B",
                      time="2023-07-10T11:54:40Z"),
            ct_record(identity={"userName": "Zoë"}, name="C",
                      time="2023-07-10T11:54:41Z")]})
        return self.run_cli("import", "--format", "cloudtrail",
                            "--data-dir", self.data_dir, path)

    def test_import_prints_a_summary(self):
        code, out, err = self.import_sample()
        self.assertEqual(code, 0)
        self.assertRegex(out, r"imported 3 events from 1 file\(s\) into")
        self.assertRegex(err, r"ct\.json: 3 events")

    def test_import_error_goes_to_stderr_with_status_2(self):
        self.import_sample()
        code, out, err = self.import_sample()
        self.assertEqual((code, out), (2, ""))
        self.assertRegex(err, r"^error: a dataset already exists")

    def test_import_with_fields_and_assume_utc(self):
        path = self.write("m.jsonl", [m365()])
        code, _, err = self.run_cli(
            "import", "--format", "jsonl", "--data-dir", self.data_dir,
            "--assume-utc", *[f"--field={k}={v}" for k, v in M365.items()],
            path)
        self.assertEqual(code, 0, err)
        self.assertEqual(self.rows()[0][2], "piet@example.com")

    def test_query_prints_one_page_as_json_lines(self):
        self.import_sample()
        code, out, _ = self.run_cli("query", "--data-dir", self.data_dir,
                                    "--page-size", "2", "--page", "1")
        self.assertEqual(code, 0)
        events = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([e["action"] for e in events], ["C", "B"])
        self.assertEqual(list(events[0]), ["id", "created_at", "actor_id",
                                           "action", "resource_type",
                                           "resource_id", "payload"])

    def test_query_filters_times_and_both_impls(self):
        self.import_sample()
        for impl in ("enhanced", "baseline"):
            with self.subTest(impl=impl):
                _, out, _ = self.run_cli(
                    "query", "--data-dir", self.data_dir, "--impl", impl,
                    "--from", "2023-07-10T11:54:40Z", "--to", str(T0 + 2))
                self.assertEqual([json.loads(x)["action"]
                                  for x in out.splitlines()], ["C", "B"])
                _, out, _ = self.run_cli(
                    "query", "--data-dir", self.data_dir, "--impl", impl,
                    "--actor", "Zoë")
                self.assertEqual([json.loads(x)["action"]
                                  for x in out.splitlines()], ["C"])

    def test_query_leaves_the_modules_paths_as_they_were(self):
        self.import_sample()
        before = [m.DB_PATH for m in MODULES]
        for impl in ("enhanced", "baseline"):
            self.run_cli("query", "--data-dir", self.data_dir,
                         "--impl", impl)
        self.assertEqual([m.DB_PATH for m in MODULES], before)

    def test_query_digit_actor_matches_int_actor(self):
        self.import_sample()
        _, out, _ = self.run_cli("query", "--data-dir", self.data_dir,
                                 "--actor", "77")
        self.assertEqual([json.loads(x)["actor_id"]
                          for x in out.splitlines()], [77])

    def test_query_errors(self):
        code, _, err = self.run_cli("query", "--data-dir", self.data_dir)
        self.assertEqual(code, 2)
        self.assertRegex(err, r"error: no dataset in .*data")
        self.assertFalse(os.path.exists(self.data_dir))
        self.import_sample()
        for argv, pattern in (
                (("--from", "2023-07-10T11:54:40"),
                 r"time '2023-07-10T11:54:40' has no time zone"),
                (("--page", "0"), r"page must be 1 or more, got 0"),
                (("--from", "5", "--to", "4"), r"from_ts must not be")):
            with self.subTest(argv=argv):
                code, _, err = self.run_cli(
                    "query", "--data-dir", self.data_dir, *argv)
                self.assertEqual(code, 2)
                self.assertRegex(err, r"^error: " + pattern)

    def test_query_actor_rule(self):
        self.assertEqual(audit_formats.query_actor("123"), 123)
        self.assertEqual(audit_formats.query_actor("0123"), "0123")
        self.assertEqual(audit_formats.query_actor("bob"), "bob")
        self.assertIsNone(audit_formats.query_actor(None))


# ---------------------------------------------------------------- checks

class RealLogChecksTest(TempDirTestCase):

    def test_missing_folder_is_reported_and_yields_no_checks(self):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            checks = audit_real_logs.real_log_checks(self.tmp, self.tmp)
        self.assertEqual(checks, [])
        self.assertRegex(err.getvalue(), r"real-logs not found")

    def test_every_recognised_file_is_imported_and_checked(self):
        folder = os.path.join(self.tmp, "shared", "real-logs")
        os.makedirs(folder)
        self.tmp_folder = folder
        records = [ct_record(time=f"2023-07-10T11:54:{s:02d}Z",
                             identity={"userName": u}, name=a)
                   for s, u, a in ((39, "a", "X"), (39, "b", "Y"),
                                   (38, "a", "Y"), (40, "c", "X"))]
        with open(os.path.join(folder, "ct.json"), "w") as f:
            json.dump({"Records": records}, f)
        with open(os.path.join(folder, "ct2.json.gz"), "wb") as f:
            f.write(gzip.compress(json.dumps({"Records": records[:2]})
                                  .encode()))
        with open(os.path.join(folder, "audit.log"), "w") as f:
            for stage in ("RequestReceived", "ResponseComplete"):
                f.write(json.dumps(k8s_event(stage=stage)) + "\n")
        with open(os.path.join(folder, "m365.jsonl"), "w") as f:
            f.write(json.dumps(m365()) + "\n" + json.dumps(m365(user="x")))
        with open(os.path.join(folder, "NOTES.md"), "w") as f:
            f.write("# notes\n")
        err = io.StringIO()
        before = [m.DB_PATH for m in MODULES]
        with contextlib.redirect_stderr(err):
            checks = audit_real_logs.real_log_checks(
                os.path.join(self.tmp, "shared"), os.path.join(self.tmp, "w"))
        self.assertEqual([m.DB_PATH for m in MODULES], before)
        failed = [c for c in checks if not c[1]]
        self.assertEqual(failed, [])
        names = [c[0] for c in checks]
        self.assertIn("real logs: m365.jsonl: import as jsonl", names)
        self.assertIn("real logs: cloudtrail appended: events equal"
                      " source records", names)
        self.assertEqual(len(checks), 5 * 4)
        self.assertRegex(err.getvalue(), r"skipped NOTES\.md: not JSON")
        details = dict((c[0], c[2]) for c in checks)
        self.assertEqual(details["real logs: audit.log: events equal"
                                 " source records"],
                         "2 events, 2 records")

    def test_detect_format_reasons(self):
        empty = self.write("empty.log", "")
        other = self.write("other.jsonl", [{"x": 1}])
        self.assertEqual(audit_formats.detect_format(empty)[2], "empty file")
        self.assertRegex(audit_formats.detect_format(other)[2],
                         r"not a CloudTrail, Kubernetes audit or Microsoft"
                         r" 365 record \(keys: x\)")


if __name__ == "__main__":
    unittest.main()


class ImportAndWriteTest(TempDirTestCase):
    """record_event during an append waits for the swap; nothing is lost
    and no id is handed out twice."""

    def test_an_event_recorded_during_an_append_is_kept(self):
        first = self.write("a.json", {"Records": [ct_record()] * 3})
        second = self.write("b.json", {"Records": [
            ct_record(time="2023-07-10T11:55:00Z")] * 4})
        import_files([first], "cloudtrail", data_dir=self.data_dir)
        real_move = audit_import._move_into_place
        moving = threading.Event()

        def slow_move(*args):
            moving.set()
            time.sleep(0.3)  # the window an unlocked write would fall in
            return real_move(*args)

        audit_import._move_into_place = slow_move
        try:
            importer = threading.Thread(target=import_files, args=(
                [second], "cloudtrail"), kwargs={"data_dir": self.data_dir,
                                                 "mode": "append"})
            importer.start()
            self.assertTrue(moving.wait(10))
            _, db_path, payload_path = audit_dataset.resolve_paths(
                self.data_dir)
            new_id = audit_writer.append_event(
                db_path, payload_path, "writer", "Recorded", "ORDER",
                "ORDER-1", {"recorded": True}, created_at=1688990000)
            importer.join(10)
        finally:
            audit_import._move_into_place = real_move
        with using_dataset(self.data_dir):
            for module in MODULES:
                events = module.query_events(Query(0, 2 ** 40,
                                                   page_size=100))
                self.assertEqual(len(events), 8)
                self.assertEqual(len({e["id"] for e in events}), 8)
                mine = [e for e in events if e["id"] == new_id]
                self.assertEqual([e["action"] for e in mine], ["Recorded"])
