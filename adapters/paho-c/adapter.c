/*
 * Eclipse Paho C (MQTTAsync) behind simqtt's driver protocol, version 1
 * (docs/client-certification.md): commands on stdin, events on stdout, one JSON object a line.
 *
 * Written the way Paho documents its asynchronous client: automatic reconnect
 * (MQTTAsync_connectOptions.automaticReconnect), a connected callback (MQTTAsync_setConnected,
 * Java's connectComplete) in which the application subscribes again when the server kept no
 * session, Clean Session as the driver asks (false in the scenarios that resume sessions),
 * Paho's file persistence (MQTTCLIENT_PERSISTENCE_DEFAULT) in the directory simqtt gives, else
 * none, and sendWhileDisconnected so what the application publishes offline is buffered.
 *
 * Build: cc -O2 -o paho-c-adapter adapters/paho-c/adapter.c -lpaho-mqtt3a -lpthread
 * (Debian: libpaho-mqtt-dev). The commands simqtt writes are serde's compact JSON, one object
 * a line; the small readers below take what that writes and nothing more.
 */
#include <MQTTAsync.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_SUBS 64
#define MAX_LINE 65536

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t subs_lock = PTHREAD_MUTEX_INITIALIZER;
static MQTTAsync client;
static int created = 0;
static int want_resubscribe = 0;
static int session_present = 0;
/* Whether session_present is known for the connection that just completed: Paho C reports it
 * to the connect call's onSuccess, which it calls for the first connection only, not for its
 * automatic reconnects. */
static int session_known = 0;
static int connected_before = 0;
/* The application's subscriptions, for resubscribing when the session is gone. */
static char *sub_filter[MAX_SUBS];
static int sub_qos[MAX_SUBS];
static int nsubs = 0;

/* ---- output ---------------------------------------------------------------------------- */

static void put_json_string(FILE *f, const char *s, size_t len) {
    fputc('"', f);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
        } else if (c < 0x20) {
            fprintf(f, "\\u%04x", c);
        } else {
            fputc(c, f);
        }
    }
    fputc('"', f);
}

static void emit(const char *text) {
    pthread_mutex_lock(&out_lock);
    fputs(text, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

static void emit_error(long long id, const char *message) {
    pthread_mutex_lock(&out_lock);
    if (id > 0)
        printf("{\"event\":\"error\",\"id\":%lld,\"message\":", id);
    else
        printf("{\"event\":\"error\",\"message\":");
    put_json_string(stdout, message, strlen(message));
    printf("}\n");
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

/* ---- input: the fields of serde's compact JSON ----------------------------------------- */

/* The text after "key": in line, or NULL. */
static const char *field(const char *line, const char *key) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *at = strstr(line, pattern);
    return at ? at + strlen(pattern) : NULL;
}

/* A JSON string at p (after its opening quote handling), unescaped into a new buffer. */
static char *read_string(const char *p, const char **end) {
    if (!p || *p != '"') return NULL;
    p++;
    char *out = malloc(strlen(p) + 1);
    size_t n = 0;
    while (*p && *p != '"') {
        if (*p == '\\' && p[1]) {
            p++;
            switch (*p) {
            case 'n': out[n++] = '\n'; break;
            case 't': out[n++] = '\t'; break;
            case 'r': out[n++] = '\r'; break;
            case 'u': {
                unsigned v = 0;
                sscanf(p + 1, "%4x", &v);
                out[n++] = (char)(v < 0x80 ? v : '?');
                p += 4;
                break;
            }
            default: out[n++] = *p;
            }
            p++;
        } else {
            out[n++] = *p++;
        }
    }
    out[n] = 0;
    if (end) *end = *p ? p + 1 : p;
    return out;
}

static char *str_field(const char *line, const char *key) {
    return read_string(field(line, key), NULL);
}

static long long int_field(const char *line, const char *key, long long otherwise) {
    const char *p = field(line, key);
    return p && (*p == '-' || (*p >= '0' && *p <= '9')) ? atoll(p) : otherwise;
}

static int bool_field(const char *line, const char *key) {
    const char *p = field(line, key);
    return p && strncmp(p, "true", 4) == 0;
}

/* ---- subscriptions the application holds ------------------------------------------------ */

static void remember(const char *filter, int qos) {
    pthread_mutex_lock(&subs_lock);
    for (int i = 0; i < nsubs; i++) {
        if (strcmp(sub_filter[i], filter) == 0) {
            sub_qos[i] = qos;
            pthread_mutex_unlock(&subs_lock);
            return;
        }
    }
    if (nsubs < MAX_SUBS) {
        sub_filter[nsubs] = strdup(filter);
        sub_qos[nsubs] = qos;
        nsubs++;
    }
    pthread_mutex_unlock(&subs_lock);
}

static void forget(const char *filter) {
    pthread_mutex_lock(&subs_lock);
    for (int i = 0; i < nsubs; i++) {
        if (strcmp(sub_filter[i], filter) == 0) {
            free(sub_filter[i]);
            sub_filter[i] = sub_filter[nsubs - 1];
            sub_qos[i] = sub_qos[nsubs - 1];
            nsubs--;
            break;
        }
    }
    pthread_mutex_unlock(&subs_lock);
}

/* What a SUBSCRIBE asked for, kept until its SUBACK. */
struct sub_request {
    long long id; /* 0: the application's resubscription */
    int count;
    char *filters[MAX_SUBS];
    int qos[MAX_SUBS];
};

static void free_request(struct sub_request *r) {
    for (int i = 0; i < r->count; i++) free(r->filters[i]);
    free(r);
}

static void on_subscribe(void *context, MQTTAsync_successData *response) {
    struct sub_request *r = context;
    pthread_mutex_lock(&out_lock);
    if (r->id > 0)
        printf("{\"event\":\"subscribed\",\"id\":%lld,\"filters\":[", r->id);
    else
        printf("{\"event\":\"subscribed\",\"filters\":[");
    for (int i = 0; i < r->count; i++) {
        printf("%s{\"filter\":", i ? "," : "");
        put_json_string(stdout, r->filters[i], strlen(r->filters[i]));
        printf(",\"qos\":%d}", r->qos[i]);
    }
    printf("],\"granted\":[");
    for (int i = 0; i < r->count; i++) {
        int granted = r->count == 1 ? response->alt.qos : response->alt.qosList[i];
        printf("%s%d", i ? "," : "", granted);
    }
    printf("]}\n");
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
    free_request(r);
}

static void on_subscribe_failure(void *context, MQTTAsync_failureData *response) {
    struct sub_request *r = context;
    emit_error(r->id, response && response->message ? response->message : "subscribe failed");
    free_request(r);
}

static int subscribe_many(struct sub_request *r) {
    MQTTAsync_responseOptions opts = MQTTAsync_responseOptions_initializer;
    opts.onSuccess = on_subscribe;
    opts.onFailure = on_subscribe_failure;
    opts.context = r;
    return MQTTAsync_subscribeMany(client, r->count, r->filters, r->qos, &opts);
}

/* ---- callbacks -------------------------------------------------------------------------- */

static void on_connect(void *context, MQTTAsync_successData *response) {
    (void)context;
    /* Called for the first connection and for every automatic reconnect, before `connected`. */
    session_present = response ? response->alt.connect.sessionPresent : 0;
    session_known = response != NULL;
}

static void on_connect_failure(void *context, MQTTAsync_failureData *response) {
    (void)context;
    emit_error(0, response && response->message ? response->message : "connect failed");
}

/* Paho's connected callback (Java's connectComplete): subscribe again when the server kept no
 * session, and when the library does not say (a reconnect), since a SUBSCRIBE that replaces
 * an existing subscription is harmless and a missing one loses messages. */
static void connected(void *context, char *cause) {
    (void)context;
    (void)cause;
    char line[128];
    if (session_known)
        snprintf(line, sizeof line,
                 "{\"event\":\"connect_complete\",\"reconnect\":%s,\"session_present\":%s}",
                 connected_before ? "true" : "false", session_present ? "true" : "false");
    else
        snprintf(line, sizeof line, "{\"event\":\"connect_complete\",\"reconnect\":%s}",
                 connected_before ? "true" : "false");
    int resubscribe = want_resubscribe && !(session_known && session_present);
    session_known = 0;
    connected_before = 1;
    emit(line);
    if (resubscribe) {
        pthread_mutex_lock(&subs_lock);
        if (nsubs > 0) {
            struct sub_request *r = calloc(1, sizeof *r);
            r->count = nsubs;
            for (int i = 0; i < nsubs; i++) {
                r->filters[i] = strdup(sub_filter[i]);
                r->qos[i] = sub_qos[i];
            }
            pthread_mutex_unlock(&subs_lock);
            if (subscribe_many(r) != MQTTASYNC_SUCCESS) {
                emit_error(0, "resubscribe failed");
                free_request(r);
            }
        } else {
            pthread_mutex_unlock(&subs_lock);
        }
    }
}

static void connection_lost(void *context, char *cause) {
    (void)context;
    pthread_mutex_lock(&out_lock);
    printf("{\"event\":\"connection_lost\",\"cause\":");
    const char *text = cause ? cause : "connection lost";
    put_json_string(stdout, text, strlen(text));
    printf("}\n");
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

static int message_arrived(void *context, char *topic, int topic_len, MQTTAsync_message *m) {
    (void)context;
    size_t len = topic_len > 0 ? (size_t)topic_len : strlen(topic);
    pthread_mutex_lock(&out_lock);
    printf("{\"event\":\"message\",\"topic\":");
    put_json_string(stdout, topic, len);
    printf(",\"qos\":%d,\"retain\":%s,\"dup\":%s,\"payload\":", m->qos,
           m->retained ? "true" : "false", m->dup ? "true" : "false");
    put_json_string(stdout, m->payload, (size_t)m->payloadlen);
    printf("}\n");
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
}

/* Completions of messages this process published carry their id (on_publish); this one,
 * by packet id, also covers messages restored from persistence after a restart. */
static void delivery_complete(void *context, MQTTAsync_token token) {
    (void)context;
    char line[96];
    snprintf(line, sizeof line, "{\"event\":\"delivery_complete\",\"packet_id\":%d}", token);
    emit(line);
}

static void on_publish(void *context, MQTTAsync_successData *response) {
    (void)response;
    intptr_t packed = (intptr_t)context;
    if ((packed & 3) == 0) return; /* QoS 0: nothing to complete */
    char line[96];
    snprintf(line, sizeof line, "{\"event\":\"delivery_complete\",\"id\":%lld",
             (long long)(packed >> 2));
    strcat(line, "}");
    emit(line);
}

static void on_publish_failure(void *context, MQTTAsync_failureData *response) {
    intptr_t packed = (intptr_t)context;
    emit_error((long long)(packed >> 2),
               response && response->message ? response->message : "publish failed");
}

static void on_disconnect(void *context, MQTTAsync_successData *response) {
    (void)context;
    (void)response;
    emit("{\"event\":\"disconnected\"}");
}

static void on_disconnect_failure(void *context, MQTTAsync_failureData *response) {
    (void)context;
    (void)response;
    emit("{\"event\":\"disconnected\"}");
}

/* ---- commands --------------------------------------------------------------------------- */

static void do_connect(const char *line) {
    char *server = str_field(line, "server");
    char *client_id = str_field(line, "client_id");
    char *dir = str_field(line, "persistence_dir");
    char uri[512];
    snprintf(uri, sizeof uri, "tcp://%s", server ? server : "127.0.0.1:1883");
    MQTTAsync_createOptions create = MQTTAsync_createOptions_initializer;
    create.sendWhileDisconnected = 1;
    create.maxBufferedMessages = 1000;
    int rc = MQTTAsync_createWithOptions(&client, uri, client_id ? client_id : "",
                                         dir ? MQTTCLIENT_PERSISTENCE_DEFAULT
                                             : MQTTCLIENT_PERSISTENCE_NONE,
                                         dir, &create);
    if (rc != MQTTASYNC_SUCCESS) {
        emit_error(0, "MQTTAsync_createWithOptions failed");
        return;
    }
    created = 1;
    want_resubscribe = bool_field(line, "resubscribe");
    MQTTAsync_setCallbacks(client, NULL, connection_lost, message_arrived, delivery_complete);
    MQTTAsync_setConnected(client, NULL, connected);
    MQTTAsync_connectOptions opts = MQTTAsync_connectOptions_initializer;
    opts.MQTTVersion = MQTTVERSION_3_1_1;
    opts.keepAliveInterval = (int)int_field(line, "keepalive", 60);
    opts.cleansession = bool_field(line, "clean_session");
    opts.automaticReconnect = bool_field(line, "automatic_reconnect");
    opts.minRetryInterval = 1;
    opts.maxRetryInterval = 4;
    opts.connectTimeout = 5;
    opts.onSuccess = on_connect;
    opts.onFailure = on_connect_failure;
    char *username = str_field(line, "username");
    char *password = str_field(line, "password");
    opts.username = username;
    opts.password = password;
    MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
    const char *w = field(line, "will");
    if (w && *w == '{') {
        will.topicName = str_field(w, "topic");
        will.message = str_field(w, "payload");
        will.qos = (int)int_field(w, "qos", 0);
        will.retained = bool_field(w, "retain");
        opts.will = &will;
    }
    rc = MQTTAsync_connect(client, &opts);
    if (rc != MQTTASYNC_SUCCESS) emit_error(0, "MQTTAsync_connect failed");
    free(server);
    free(client_id);
    /* dir, the will and the credentials stay: Paho keeps pointers to them for reconnects. */
}

static void do_subscribe(const char *line) {
    struct sub_request *r = calloc(1, sizeof *r);
    r->id = int_field(line, "id", 0);
    const char *p = line;
    while ((p = strstr(p, "\"filter\":")) && r->count < MAX_SUBS) {
        const char *end = NULL;
        r->filters[r->count] = read_string(p + strlen("\"filter\":"), &end);
        r->qos[r->count] = (int)int_field(end, "qos", 0);
        remember(r->filters[r->count], r->qos[r->count]);
        r->count++;
        p = end;
    }
    if (subscribe_many(r) != MQTTASYNC_SUCCESS) {
        emit_error(r->id, "MQTTAsync_subscribeMany failed");
        free_request(r);
    }
}

static void on_unsubscribe(void *context, MQTTAsync_successData *response) {
    (void)response;
    char line[96];
    snprintf(line, sizeof line, "{\"event\":\"unsubscribed\",\"id\":%lld",
             (long long)(intptr_t)context);
    strcat(line, "}");
    emit(line);
}

static void do_unsubscribe(const char *line) {
    long long id = int_field(line, "id", 0);
    char *filters[MAX_SUBS];
    int n = 0;
    const char *p = field(line, "filters");
    if (p && *p == '[') p++;
    while (p && *p == '"' && n < MAX_SUBS) {
        const char *end = NULL;
        filters[n] = read_string(p, &end);
        forget(filters[n]);
        n++;
        p = end && *end == ',' ? end + 1 : NULL;
    }
    MQTTAsync_responseOptions opts = MQTTAsync_responseOptions_initializer;
    opts.onSuccess = on_unsubscribe;
    opts.context = (void *)(intptr_t)id;
    if (MQTTAsync_unsubscribeMany(client, n, filters, &opts) != MQTTASYNC_SUCCESS)
        emit_error(id, "MQTTAsync_unsubscribeMany failed");
    for (int i = 0; i < n; i++) free(filters[i]);
}

static void do_publish(const char *line) {
    long long id = int_field(line, "id", 0);
    char *topic = str_field(line, "topic");
    char *payload = str_field(line, "payload");
    int qos = (int)int_field(line, "qos", 0);
    MQTTAsync_message m = MQTTAsync_message_initializer;
    m.payload = payload;
    m.payloadlen = (int)strlen(payload);
    m.qos = qos;
    m.retained = bool_field(line, "retain");
    MQTTAsync_responseOptions opts = MQTTAsync_responseOptions_initializer;
    opts.onSuccess = on_publish;
    opts.onFailure = on_publish_failure;
    opts.context = (void *)(intptr_t)((id << 2) | qos);
    int rc = MQTTAsync_sendMessage(client, topic, &m, &opts);
    if (rc != MQTTASYNC_SUCCESS) {
        char text[64];
        snprintf(text, sizeof text, "MQTTAsync_sendMessage failed (%d)", rc);
        emit_error(id, text);
    }
    free(topic);
    free(payload);
}

int main(void) {
    static char line[MAX_LINE];
    char ready[128];
    MQTTAsync_nameValue *info = MQTTAsync_getVersionInfo();
    const char *version = "?";
    for (; info && info->name; info++)
        if (strcmp(info->name, "Product version") == 0) version = info->value;
    snprintf(ready, sizeof ready, "{\"event\":\"ready\",\"protocol\":1,\"client\":\"paho-mqtt-c %s\"}",
             version);
    emit(ready);
    while (fgets(line, sizeof line, stdin)) {
        char *cmd = str_field(line, "cmd");
        if (!cmd) continue;
        if (strcmp(cmd, "connect") == 0) {
            do_connect(line);
        } else if (strcmp(cmd, "exit") == 0) {
            free(cmd);
            break;
        } else if (!created) {
            emit_error(int_field(line, "id", 0), "not connected: send connect first");
        } else if (strcmp(cmd, "subscribe") == 0) {
            do_subscribe(line);
        } else if (strcmp(cmd, "unsubscribe") == 0) {
            do_unsubscribe(line);
        } else if (strcmp(cmd, "publish") == 0) {
            do_publish(line);
        } else if (strcmp(cmd, "disconnect") == 0) {
            MQTTAsync_disconnectOptions opts = MQTTAsync_disconnectOptions_initializer;
            opts.onSuccess = on_disconnect;
            opts.onFailure = on_disconnect_failure;
            opts.timeout = 1000;
            if (MQTTAsync_disconnect(client, &opts) != MQTTASYNC_SUCCESS)
                emit("{\"event\":\"disconnected\"}");
        }
        free(cmd);
    }
    if (created) MQTTAsync_destroy(&client);
    return 0;
}
