#ifndef HERALD_CCURL_H
#define HERALD_CCURL_H
#include <curl/curl.h>
#include <stddef.h>

/// libcurl's setters and getters are variadic, which Swift cannot call: these wrap the few that
/// Herald's transports need. Nothing but `CurlTransport` (Delivery) uses them.

/// A multi handle keeping at most `per_host` connections to one host (pipelining off) and up
/// to `cache` idle connections.
CURLM *herald_curl_multi_new(long per_host, long cache);

/// What one request collects of its answer: the last response's Content-Type and Retry-After
/// (cut to their buffers), up to `max_body` bytes of its body (more ends the transfer, with
/// `truncated` set), and libcurl's own words on a failure.
typedef struct herald_curl_answer {
    unsigned char *body;
    size_t body_length;
    size_t body_capacity;
    size_t max_body;
    int truncated;
    char content_type[256];
    char retry_after[128];
    char error[CURL_ERROR_SIZE];
} herald_curl_answer;

/// A new, empty answer for at most `max_body` bytes of body; NULL when out of memory.
herald_curl_answer *herald_curl_answer_new(size_t max_body);
void herald_curl_answer_free(herald_curl_answer *answer);

/// An easy handle for one POST collecting into `answer`: `body` copied, `headers` kept by the
/// caller until the transfer is done; no redirects followed, no proxy, http and https only,
/// certificates and host names checked (against `ca_file` when not NULL); `timeout_ms` bounds
/// the whole exchange. `reuse`: a handle of a finished transfer to set up again (reset first,
/// so that none of its options outlives it; libcurl keeps its buffers, and its TLS sessions,
/// which a later transfer to the same host may resume under the same verification), or NULL
/// for a new one. NULL when refused; `reuse` is then freed.
CURL *herald_curl_request_new(CURL *reuse, const char *url, struct curl_slist *headers, const void *body, long length,
                              long connect_timeout_ms, long timeout_ms, const char *ca_file,
                              herald_curl_answer *answer);

/// The next finished transfer of `multi`: 1 with its handle, HTTP status and CURLcode, or 0.
int herald_curl_next_done(CURLM *multi, CURL **easy, long *status, int *result);

/// Microseconds from the transfer's start until it got its connection and began sending
/// (libcurl's pre-transfer time); 0 while it still waited for a connection or a name.
long long herald_curl_pretransfer_us(CURL *easy);
#endif
