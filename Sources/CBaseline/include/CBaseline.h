#ifndef HERALD_CBASELINE_H
#define HERALD_CBASELINE_H
#include <stddef.h>
#include <stdint.h>
/// Consumes `count` messages from `queue` with basic.qos `prefetch` and acks each
/// one: the plain C loop over rabbitmq-c that the Swift client is compared with.
/// Returns 0 and the elapsed seconds, or a negative number on failure (with a message in `error`).
int herald_baseline_consume_ack(const char *host, int port, const char *vhost,
                                const char *user, const char *password,
                                const char *queue, int prefetch, long count,
                                double *seconds, char *error, int error_len);
/// Herald's broker work with no Herald logic: consumes `count` messages from `ingest`,
/// publishes each with confirms to `exchange` (round robin over routing keys 0..partitions-1),
/// acks the ingest delivery once confirmed, and consumes and acks them again from the queues
/// `<exchange>.p.<n>`, in one plain loop over rabbitmq-c. The queues must exist, bound.
/// Returns 0 and the seconds until the last partition delivery was acked, or a negative number.
int herald_baseline_topology(const char *host, int port, const char *vhost,
                             const char *user, const char *password,
                             const char *ingest, const char *exchange, int partitions,
                             int prefetch, long count, double *seconds,
                             char *error, int error_len);

/// Bytes of the heap in use (glibc's mallinfo2: allocated chunks and mmapped blocks), for the
/// memory benchmark's before and after.
size_t herald_heap_in_use(void);
/// Returns the heap's free pages to the system (malloc_trim), then the resident set in bytes.
size_t herald_heap_trim_and_resident(void);
#endif
