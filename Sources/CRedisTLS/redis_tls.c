#include "CRedisTLS.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <hiredis/sds.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct herald_redis_tls {
    SSL_CTX *ctx;
    SSL *ssl;
};

/// The reason of the last failure: OpenSSL's queue first, else errno, else `fallback`.
static void describe(char *error, size_t size, const char *what, int ssl_error) {
    unsigned long code = ERR_get_error();
    if (code != 0) {
        char text[256];
        ERR_error_string_n(code, text, sizeof text);
        snprintf(error, size, "%s: %s", what, text);
    } else if (ssl_error == SSL_ERROR_ZERO_RETURN) {
        snprintf(error, size, "%s: the server closed the connection", what);
    } else if (ssl_error == SSL_ERROR_WANT_READ || ssl_error == SSL_ERROR_WANT_WRITE ||
               errno == EAGAIN || errno == EWOULDBLOCK) {
        snprintf(error, size, "%s: timed out", what);
    } else if (errno != 0) {
        snprintf(error, size, "%s: %s", what, strerror(errno));
    } else {
        snprintf(error, size, "%s: the connection was closed", what);
    }
    ERR_clear_error();
}

/// Encrypted client keys are not supported: without this, OpenSSL would ask for the
/// passphrase on the terminal and block the connection's thread.
static int no_passphrase(char *buffer, int size, int rwflag, void *userdata) {
    (void)buffer; (void)size; (void)rwflag; (void)userdata;
    return 0;
}

/// Whether a failed SSL_read/SSL_write was only interrupted by a signal (then it is tried again;
/// a timeout, EAGAIN, is not).
static int interrupted(const herald_redis_tls *tls, int result) {
    int saved = errno;
    int code = SSL_get_error(tls->ssl, result);
    errno = saved;
    return saved == EINTR && (code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE || code == SSL_ERROR_SYSCALL);
}

void herald_redis_tls_free(herald_redis_tls *tls) {
    if (tls == NULL) return;
    if (tls->ssl != NULL) SSL_free(tls->ssl);
    if (tls->ctx != NULL) SSL_CTX_free(tls->ctx);
    free(tls);
}

herald_redis_tls *herald_redis_tls_connect(redisContext *context, const char *host,
                                           const char *ca_file, const char *cert_file,
                                           const char *key_file, char *error, size_t error_size) {
    ERR_clear_error();
    herald_redis_tls *tls = calloc(1, sizeof *tls);
    if (tls == NULL) {
        snprintf(error, error_size, "out of memory");
        return NULL;
    }
    tls->ctx = SSL_CTX_new(TLS_client_method());
    if (tls->ctx == NULL) {
        describe(error, error_size, "cannot make a TLS context", 0);
        goto fail;
    }
    SSL_CTX_set_min_proto_version(tls->ctx, TLS1_2_VERSION);
    SSL_CTX_set_default_passwd_cb(tls->ctx, no_passphrase);
    SSL_CTX_set_verify(tls->ctx, SSL_VERIFY_PEER, NULL);
    if (ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(tls->ctx, ca_file, NULL) != 1) {
            describe(error, error_size, "cannot read the CA file", 0);
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(tls->ctx) != 1) {
        describe(error, error_size, "cannot load the system's CAs", 0);
        goto fail;
    }
    if (cert_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(tls->ctx, cert_file) != 1) {
            describe(error, error_size, "cannot read the client certificate", 0);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(tls->ctx, key_file, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(tls->ctx) != 1) {
            describe(error, error_size, "cannot use the client key (it must match the certificate and not be encrypted)", 0);
            goto fail;
        }
    }
    tls->ssl = SSL_new(tls->ctx);
    if (tls->ssl == NULL || SSL_set_fd(tls->ssl, context->fd) != 1) {
        describe(error, error_size, "cannot start TLS on the socket", 0);
        goto fail;
    }
    // An address is checked against the certificate's IP names, anything else against its
    // DNS names (and sent as SNI).
    unsigned char address[16];
    int is_address = inet_pton(AF_INET, host, address) == 1 || inet_pton(AF_INET6, host, address) == 1;
    X509_VERIFY_PARAM *param = SSL_get0_param(tls->ssl);
    if (is_address) {
        if (X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1) {
            describe(error, error_size, "cannot check the certificate for this address", 0);
            goto fail;
        }
    } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set1_host(tls->ssl, host) != 1 || SSL_set_tlsext_host_name(tls->ssl, host) != 1) {
            describe(error, error_size, "cannot check the certificate for this host", 0);
            goto fail;
        }
    }
    errno = 0;
    int status = SSL_connect(tls->ssl);
    if (status != 1) {
        long verified = SSL_get_verify_result(tls->ssl);
        if (verified != X509_V_OK) {
            snprintf(error, error_size, "the server's certificate was refused: %s",
                     X509_verify_cert_error_string(verified));
            ERR_clear_error();
        } else {
            describe(error, error_size, "the TLS handshake failed", SSL_get_error(tls->ssl, status));
        }
        goto fail;
    }
    return tls;
fail:
    herald_redis_tls_free(tls);
    return NULL;
}

int herald_redis_tls_flush(herald_redis_tls *tls, redisContext *context, char *error, size_t error_size) {
    while (sdslen(context->obuf) > 0) {
        size_t length = sdslen(context->obuf);
        int chunk = length > (size_t)(1 << 30) ? (1 << 30) : (int)length;
        int written;
        do {
            ERR_clear_error();
            errno = 0;
            written = SSL_write(tls->ssl, context->obuf, chunk);
        } while (written <= 0 && interrupted(tls, written));
        if (written <= 0) {
            describe(error, error_size, "TLS write", SSL_get_error(tls->ssl, written));
            return -1;
        }
        if ((size_t)written == length) {
            sdsclear(context->obuf);
        } else {
            sdsrange(context->obuf, written, -1);
        }
    }
    return 0;
}

int herald_redis_tls_read(herald_redis_tls *tls, redisContext *context, char *error, size_t error_size) {
    char buffer[16 * 1024];
    int count;
    do {
        ERR_clear_error();
        errno = 0;
        count = SSL_read(tls->ssl, buffer, sizeof buffer);
    } while (count <= 0 && interrupted(tls, count));
    if (count <= 0) {
        describe(error, error_size, "TLS read", SSL_get_error(tls->ssl, count));
        return -1;
    }
    if (redisReaderFeed(context->reader, buffer, (size_t)count) != REDIS_OK) {
        snprintf(error, error_size, "cannot buffer the reply");
        return -1;
    }
    return 0;
}

int herald_redis_tls_pending(const herald_redis_tls *tls) {
    return SSL_pending(tls->ssl);
}
