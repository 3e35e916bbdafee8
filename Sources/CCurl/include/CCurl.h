#ifndef HERALD_CCURL_H
#define HERALD_CCURL_H
#include <curl/curl.h>
#include <stddef.h>

/// libcurl's setters and getters are variadic, which Swift cannot call: these wrap the few
/// the benchmark's libcurl client needs. Nothing but `CurlPostClient` uses them.

/// A multi handle keeping at most `per_host` connections to one host (pipelining off).
CURLM *herald_curl_multi_new(long per_host);

/// An easy handle for one POST of `length` bytes (copied) with `headers` (not copied: keep
/// them until the transfer is done), the response body discarded, within `timeout_ms`.
CURL *herald_curl_post_new(const char *url, struct curl_slist *headers, const void *body, long length,
                           long timeout_ms);

/// The next finished transfer of `multi`: 1 with its handle, HTTP status and CURLcode, or 0.
int herald_curl_next_done(CURLM *multi, CURL **easy, long *status, int *result);
#endif
