/* proto-test: job states, times, capacity parsing, artifact path checks, JSON. */
#include "proto/proto.h"
#include "tap.h"

TEST(job_state_names_round_trip)
{
	for (int i = 0; i < JOB_STATE_MAX; i++) {
		enum job_state s;
		CHECK_EQ(job_state_from_string(job_state_to_string((enum job_state)i), &s), 0);
		CHECK_EQ(s, i);
	}
	enum job_state s;
	CHECK_EQ(job_state_from_string("done", &s), -EINVAL);
	CHECK(job_state_is_terminal(JOB_LOST));
	CHECK(!job_state_is_terminal(JOB_RUNNING));
	CHECK(job_state_is_active(JOB_LEASED));
	CHECK(!job_state_is_active(JOB_QUEUED));
}

TEST(time_round_trip)
{
	json_t *o = json_object();
	proto_set_time(o, "t", 1700000000123ULL);
	proto_set_time(o, "none", 0);
	CHECK_STREQ(json_string_value(json_object_get(o, "t")), "2023-11-14T22:13:20.123Z");
	CHECK(json_is_null(json_object_get(o, "none")));
	uint64_t ms = 0;
	CHECK_EQ(proto_parse_time("2023-11-14T22:13:20.123Z", &ms), 0);
	CHECK_EQ(ms, 1700000000123ULL);
	CHECK_EQ(proto_parse_time("2023-11-14T22:13:20Z", &ms), 0);
	CHECK_EQ(ms, 1700000000000ULL);
	CHECK_EQ(proto_parse_time("2023-11-14 22:13:20Z", &ms), -EINVAL);
	CHECK_EQ(proto_parse_time("2023-13-14T22:13:20Z", &ms), -EINVAL);
	CHECK_EQ(proto_parse_time("2023-11-14T22:13:20.Z", &ms), -EINVAL);
	json_decref(o);
}

TEST(capacity_from_json)
{
	struct kiln_err err = {0};
	struct proto_capacity c;
	json_t *o = json_loads("{\"slots\":4,\"cpus\":2.5,\"memory\":\"4Gi\",\"gpus\":1}", 0, NULL);
	CHECK_EQ(proto_capacity_from_json(o, "capacity", &c, &err), 0);
	CHECK_EQ(c.slots, 4);
	CHECK(c.cpus == 2.5);
	CHECK_EQ(c.memory, 4ULL << 30);
	CHECK_EQ(c.gpus, 1);
	json_decref(o);

	o = json_loads("{\"slots\":-1}", 0, NULL);
	CHECK_EQ(proto_capacity_from_json(o, "capacity", &c, &err), -EINVAL);
	CHECK(strstr(err.msg, "capacity.slots") != NULL);
	json_decref(o);
	o = json_loads("{\"memory\":\"lots\"}", 0, NULL);
	CHECK_EQ(proto_capacity_from_json(o, "capacity", &c, &err), -EINVAL);
	CHECK(strstr(err.msg, "'lots'") != NULL);
	json_decref(o);
	o = json_loads("{\"disks\":1}", 0, NULL);
	CHECK_EQ(proto_capacity_from_json(o, "capacity", &c, &err), -EINVAL);
	CHECK(strstr(err.msg, "unknown field 'disks'") != NULL);
	json_decref(o);
	CHECK_EQ(proto_capacity_from_json(NULL, "capacity", &c, &err), 0);
	CHECK_EQ(c.slots, 0);
}

TEST(artifact_paths)
{
	struct kiln_err err = {0};
	CHECK_EQ(proto_artifact_path_check("out/report.xml", &err), 0);
	CHECK_EQ(proto_artifact_path_check("a..b/c", &err), 0);
	CHECK_EQ(proto_artifact_path_check("../etc/passwd", &err), -EINVAL);
	CHECK(strstr(err.msg, "'..'") != NULL);
	CHECK_EQ(proto_artifact_path_check("a/../../b", &err), -EINVAL);
	CHECK_EQ(proto_artifact_path_check("/etc/passwd", &err), -EINVAL);
	CHECK(strstr(err.msg, "absolute") != NULL);
	CHECK_EQ(proto_artifact_path_check("a//b", &err), -EINVAL);
	CHECK_EQ(proto_artifact_path_check("a/./b", &err), -EINVAL);
	CHECK_EQ(proto_artifact_path_check("a\\..\\b", &err), -EINVAL);
	CHECK_EQ(proto_artifact_path_check("a/b/", &err), -EINVAL);
	CHECK_EQ(proto_artifact_path_check("", &err), -EINVAL);
	CHECK_EQ(proto_artifact_path_check("a\nb", &err), -EINVAL);
	CHECK_EQ(proto_artifact_path_check("\xff\xfe", &err), -EINVAL);
}

TEST(labels_split_join)
{
	char l1[] = "Linux", l2[] = "GPU-count:2", l3[] = "x86_64";
	char *in[] = {l1, l2, l3};
	char *j = proto_labels_join(in, 3);
	CHECK_STREQ(j, "linux,gpu-count:2,x86_64");
	size_t n;
	char **v = proto_labels_split(j, &n);
	CHECK_EQ(n, 3);
	CHECK_STREQ(v[1], "gpu-count:2");
	CHECK(v[3] == NULL);
	proto_strv_free(v, n);
	free(j);
	v = proto_labels_split("", &n);
	CHECK_EQ(n, 0);
	proto_strv_free(v, n);
}

TEST(job_to_json)
{
	struct proto_job j = {0};
	j.id = 7;
	j.name = xstrdup("build");
	j.state = JOB_RUNNING;
	j.runs_on = xstrdup("linux,gpu");
	j.fence = 3;
	j.attempt = 1;
	j.max_attempts = 2;
	j.needs.slots = 1;
	j.has_exit_code = false;
	j.spec = json_pack("{s:s}", "name", "build");
	json_t *o = proto_job_to_json(&j, PROTO_JOB_SPEC | PROTO_JOB_ATTEMPTS);
	CHECK_EQ(json_integer_value(json_object_get(o, "id")), 7);
	CHECK_STREQ(json_string_value(json_object_get(o, "state")), "running");
	CHECK_EQ(json_array_size(json_object_get(o, "runs_on")), 2);
	CHECK(json_is_null(json_object_get(o, "exit_code")));
	CHECK(json_is_object(json_object_get(o, "spec")));
	CHECK(json_is_array(json_object_get(o, "attempts")));
	CHECK(json_is_true(json_object_get(o, "schedulable")));
	json_decref(o);
	o = proto_job_to_json(&j, 0);
	CHECK(json_object_get(o, "spec") == NULL);
	json_decref(o);
	proto_job_release(&j);

	json_t *e = proto_error("not_found", "job %d not found", 9);
	CHECK_STREQ(json_string_value(json_object_get(json_object_get(e, "error"), "code")),
		    "not_found");
	CHECK_STREQ(json_string_value(json_object_get(json_object_get(e, "error"), "message")),
		    "job 9 not found");
	json_decref(e);
}

int main(void) { return tap_run(); }
