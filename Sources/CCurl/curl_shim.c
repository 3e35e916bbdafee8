#include "CCurl.h"
#include <stdlib.h>
#include <string.h>
#include <strings.h>

CURLM *herald_curl_multi_new(long per_host, long cache) {
    CURLM *multi = curl_multi_init();
    if (multi == NULL) return NULL;
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, per_host);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, cache);
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
    return multi;
}

herald_curl_answer *herald_curl_answer_new(size_t max_body) {
    herald_curl_answer *answer = calloc(1, sizeof(herald_curl_answer));
    if (answer == NULL) return NULL;
    answer->max_body = max_body;
    return answer;
}

void herald_curl_answer_free(herald_curl_answer *answer) {
    if (answer == NULL) return;
    free(answer->body);
    free(answer);
}

/// Keeps up to `max_body` bytes; one byte more ends the transfer (the connection is closed
/// rather than read to its end for a target that sends megabytes).
static size_t collect(char *data, size_t size, size_t count, void *user) {
    herald_curl_answer *answer = user;
    size_t length = size * count;
    size_t room = answer->max_body - answer->body_length;
    size_t kept = length < room ? length : room;
    if (kept > 0) {
        if (answer->body_length + kept > answer->body_capacity) {
            // Room grows by doubling from 4 KiB, up to the limit: most answers are a few hundred bytes.
            size_t capacity = answer->body_capacity > 0 ? answer->body_capacity : 4096;
            while (capacity < answer->body_length + kept) capacity *= 2;
            if (capacity > answer->max_body) capacity = answer->max_body;
            unsigned char *grown = realloc(answer->body, capacity);
            if (grown == NULL) return 0;
            answer->body = grown;
            answer->body_capacity = capacity;
        }
        memcpy(answer->body + answer->body_length, data, kept);
        answer->body_length += kept;
    }
    if (kept < length) {
        answer->truncated = 1;
        return 0;
    }
    return length;
}

/// Copies a header's value (after `name:`, spaces and the line end trimmed) into `into`, unless
/// one came already in this response (the first counts); a value too long for `into` counts as
/// none (cut, it could read as something else).
static void header_value(const char *line, size_t length, size_t name_length, char *into, size_t size) {
    if (into[0] != 0) return;
    size_t start = name_length;
    while (start < length && (line[start] == ' ' || line[start] == '\t')) start++;
    size_t end = length;
    while (end > start && (line[end - 1] == '\r' || line[end - 1] == '\n' || line[end - 1] == ' ')) end--;
    if (end - start > size - 1) return;
    memcpy(into, line + start, end - start);
    into[end - start] = 0;
}

static size_t headers(char *line, size_t size, size_t count, void *user) {
    herald_curl_answer *answer = user;
    size_t length = size * count;
    // Trailers (after a chunked body) are not the answer's headers.
    if (answer->body_length > 0 || answer->truncated) return length;
    if (length >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        // A new response (after a 100 Continue, say): only the last one's headers count.
        answer->content_type[0] = 0;
        answer->retry_after[0] = 0;
    } else if (length >= 13 && strncasecmp(line, "content-type:", 13) == 0) {
        header_value(line, length, 13, answer->content_type, sizeof(answer->content_type));
    } else if (length >= 12 && strncasecmp(line, "retry-after:", 12) == 0) {
        header_value(line, length, 12, answer->retry_after, sizeof(answer->retry_after));
    }
    return length;
}

CURL *herald_curl_request_new(CURL *reuse, const char *url, struct curl_slist *headers_list, const void *body,
                              long length, long connect_timeout_ms, long timeout_ms, const char *ca_file,
                              herald_curl_answer *answer) {
    CURL *easy = reuse;
    if (easy != NULL) {
        curl_easy_reset(easy);
    } else {
        easy = curl_easy_init();
    }
    if (easy == NULL) return NULL;
    // The options that keep a hostile target in its place: any one refused means no request.
    int refused = curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_NOPROXY, "*") != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout_ms) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, timeout_ms) != CURLE_OK
        // A name lookup still running at the timeout is left to its thread, not waited for
        // (libcurl would wait on the one thread that drives every transfer).
        || curl_easy_setopt(easy, CURLOPT_QUICK_EXIT, 1L) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_URL, url) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers_list) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, length) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, body) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, collect) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_WRITEDATA, answer) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, headers) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_HEADERDATA, answer) != CURLE_OK
        || curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, answer->error) != CURLE_OK;
    // HERALD_ZAQAR_CA_FILE alone: Debian's libcurl also reads /etc/ssl/certs unless told not to.
    if (!refused && ca_file != NULL) {
        refused = curl_easy_setopt(easy, CURLOPT_CAINFO, ca_file) != CURLE_OK
            || curl_easy_setopt(easy, CURLOPT_CAPATH, NULL) != CURLE_OK;
    }
    if (refused) {
        curl_easy_cleanup(easy);
        return NULL;
    }
    return easy;
}

int herald_curl_next_done(CURLM *multi, CURL **easy, long *status, int *result) {
    int left = 0;
    CURLMsg *message;
    while ((message = curl_multi_info_read(multi, &left)) != NULL) {
        if (message->msg != CURLMSG_DONE) continue;
        *easy = message->easy_handle;
        *result = (int)message->data.result;
        *status = 0;
        curl_easy_getinfo(message->easy_handle, CURLINFO_RESPONSE_CODE, status);
        return 1;
    }
    return 0;
}

long long herald_curl_pretransfer_us(CURL *easy) {
    curl_off_t pretransfer = 0;
    if (curl_easy_getinfo(easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer) != CURLE_OK) return 0;
    return pretransfer > 0 ? (long long)pretransfer : 0;
}
