/*
 * server — the engine (prefix srv_): owns the loop, the queue, the event
 * log, the committer, the render pool, the delivery loop and the control
 * socket, and implements the control operations (docs/protocol.md).
 *
 * Start-up recovers the queue: half-accepted submissions (state
 * "accepting", a crash during intake) are purged; every other campaign is
 * compiled again from its stored definition, rendering resumes with the
 * contacts still waiting, and delivery resumes from the due index.
 */
#ifndef CARTEIRO_SERVER_H
#define CARTEIRO_SERVER_H

#include "conf/conf.h"

/* Run until SIGTERM/SIGINT (or a "stop" request). `cf` is taken over
 * (reload replaces it). Returns the process exit status. */
int srv_run(struct cf *cf);

#endif
