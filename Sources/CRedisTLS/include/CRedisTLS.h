#ifndef HERALD_CREDISTLS_H
#define HERALD_CREDISTLS_H

#include <stddef.h>
#include <hiredis/hiredis.h>

/// TLS for a hiredis 0.14 context, whose library has no TLS of its own (Debian 12's
/// libhiredis0.14). hiredis still connects the TCP socket, formats commands into its
/// output buffer and parses replies with its reader; these functions move the bytes
/// between those buffers and the socket through OpenSSL instead of read(2)/write(2).
typedef struct herald_redis_tls herald_redis_tls;

/// Runs the TLS handshake on the context's connected socket and checks the server's
/// certificate: against `ca_file`, or the system's CAs when it is NULL, and for `host`
/// (a DNS name or an IP address). `cert_file`/`key_file` (both or neither) present a
/// client certificate. Returns NULL and writes a reason into `error` on failure.
herald_redis_tls *herald_redis_tls_connect(redisContext *context, const char *host,
                                           const char *ca_file, const char *cert_file,
                                           const char *key_file, char *error, size_t error_size);

/// Writes everything in the context's output buffer. 0 when it is all written, -1 on an
/// error or a timeout (the reason in `error`).
int herald_redis_tls_flush(herald_redis_tls *tls, redisContext *context, char *error, size_t error_size);

/// Reads once (blocking up to the socket's timeout) and feeds what came to the context's
/// reader. 0 when something was read, -1 on an error, a timeout or a closed connection.
int herald_redis_tls_read(herald_redis_tls *tls, redisContext *context, char *error, size_t error_size);

/// Bytes OpenSSL already decrypted and holds: poll(2) cannot see them.
int herald_redis_tls_pending(const herald_redis_tls *tls);

void herald_redis_tls_free(herald_redis_tls *tls);

#endif
