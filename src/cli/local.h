/*
 * local: a kiln server and agent in this process (kiln up, embedded kiln run).
 */
#pragma once

#include "agent/agent.h"
#include "cli.h"
#include "server/server.h"

#include <pthread.h>

struct local_options {
	const char *state_dir; /* server files; the agent's in <state_dir>/agent */
	const char *listen;    /* NULL: 127.0.0.1:7700 */
	bool durable;          /* fsync every commit (kiln up); a throw-away run need not */
	struct agent_config agent; /* server, state_dir, on_ready are filled in */
};

struct local {
	struct server *server;
	struct agent *agent;
	char *url; /* "http://HOST:PORT" of the server */
	char *token; /* an admin token: the agent's and the client's (freed, zeroed by local_stop) */
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool ready, agent_done;
	int64_t agent_id;
	int agent_rc;
	struct kiln_err agent_err;
};

/* Starts both and waits until the agent is registered. -errno with err set. */
int local_start(struct local *l, const struct local_options *o, struct kiln_err *err);
/* Stops the agent (drain: let running jobs finish first), then the server. */
void local_stop(struct local *l, bool drain);
