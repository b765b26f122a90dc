/*
 * webhook-fuzz: a GitHub workflow_job payload, as the intake reads it once
 * its signature verified (webhook_payload_parse), and the kiln job a queued
 * one becomes (webhook_runs_on, webhook_runner_spec). Properties (abort
 * otherwise):
 *  - a refused payload has a message; an accepted one has a lower-case
 *    action, a job id > 0 and a run attempt > 0;
 *  - its runs-on labels are valid, lower-case, without `self-hosted`, or it
 *    is refused with a reason;
 *  - the spec made from it loads (spec_load) into exactly one job whose
 *    runs-on is that list and whose environment carries the job id — the
 *    payload's text can never make the job spec invalid or reach the step's
 *    command (the command is the server's, taken as is).
 */
#include "server/server-internal.h"
#include "spec/spec.h"

#include <ctype.h>
#include <inttypes.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define COMMAND "echo runner $GH_JOB_ID"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > (1 << 20))
		return 0;
	struct webhook_event ev = {0};
	struct kiln_err err = {0};
	if (webhook_payload_parse((const char *)data, size, &ev, &err) < 0) {
		if (!err.msg[0] || ev.payload)
			abort();
		return 0;
	}
	if (ev.gh_job_id <= 0 || ev.run_attempt <= 0 || !ev.action[0])
		abort();
	for (const char *p = ev.action; *p; p++)
		if (!islower((unsigned char)*p) && *p != '_')
			abort();
	const char *why = NULL;
	json_t *labels = json_object_get(json_object_get(ev.payload, "workflow_job"), "labels");
	json_t *runs_on = webhook_runs_on(labels, &why);
	if (!runs_on) {
		if (!why)
			abort();
		json_decref(ev.payload);
		return 0;
	}
	size_t i;
	json_t *v;
	json_array_foreach(runs_on, i, v)
	{
		const char *l = json_string_value(v);
		if (!l || !spec_label_valid(l) || streq(l, "self-hosted"))
			abort();
		for (const char *p = l; *p; p++)
			if (isupper((unsigned char)*p))
				abort();
	}
	char *text = webhook_runner_spec(ev.payload, runs_on, "acme", "d-1", COMMAND, "TOKEN_A,B");
	struct spec_job **jobs = NULL;
	size_t n = 0;
	struct spec_diags diags = {0};
	if (spec_load("webhook", text, strlen(text), &jobs, &n, &diags) < 0 || n != 1) {
		struct buf b = BUF_INIT;
		spec_diags_format(&diags, &b);
		fprintf(stderr, "runner spec refused:\n%s\n%s\n", text, b.data ? b.data : "");
		abort();
	}
	struct spec_job *j = jobs[0];
	if (j->n_runs_on != json_array_size(runs_on) || j->n_steps != 1 ||
	    !streq(j->steps[0].run, COMMAND) || j->n_secrets != 2)
		abort();
	for (size_t k = 0; k < j->n_runs_on; k++)
		if (!streq(j->runs_on[k], json_string_value(json_array_get(runs_on, k))))
			abort();
	char id[32];
	snprintf(id, sizeof(id), "%" PRId64, ev.gh_job_id);
	bool found = false;
	for (size_t k = 0; k < j->n_env; k++)
		found |= streq(j->env[k].key, "GH_JOB_ID") && streq(j->env[k].value, id);
	if (!found)
		abort();
	spec_jobs_free(jobs, n);
	spec_diags_release(&diags);
	free(text);
	json_decref(runs_on);
	json_decref(ev.payload);
	return 0;
}
