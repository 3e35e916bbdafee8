#include "CCurl.h"

static size_t discard(char *data, size_t size, size_t count, void *user) {
    (void)data;
    (void)user;
    return size * count;
}

CURLM *herald_curl_multi_new(long per_host) {
    CURLM *multi = curl_multi_init();
    if (multi == NULL) return NULL;
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, per_host);
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
    return multi;
}

CURL *herald_curl_post_new(const char *url, struct curl_slist *headers, const void *body, long length,
                           long timeout_ms) {
    CURL *easy = curl_easy_init();
    if (easy == NULL) return NULL;
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, length);
    curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, body);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
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
