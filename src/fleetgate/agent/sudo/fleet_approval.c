/*
 * fleet_approval: a sudo (>= 1.9) approval plugin that asks the fleet agent.
 *
 * Loaded by /etc/sudo.conf:
 *   Plugin fleet_approval /usr/libexec/fleetgate-agent/fleet_approval.so socket=/run/fleetgate-agent/sudo.sock
 *
 * sudo calls check() after its policy plugin (sudoers) accepted the command, with the
 * command it resolved (command_info "command="), the argv it will run and the target
 * user. The plugin sends one JSON line in a datagram to the agent's decision socket and
 * reads one line back: "allow <code> <message>" or "deny <code> <message>". Anything
 * else, including an agent that is not running or does not answer in time, is a refusal:
 * it fails closed. The agent identifies the caller itself (the credentials the kernel
 * attaches to the datagram, /proc); nothing here is trusted for that. Callers whose real
 * uid is 0 are not asked: root needs no elevation.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <sudo_plugin.h>

#define DEFAULT_SOCKET "/run/fleetgate-agent/sudo.sock"
#define MAX_REQUEST (64 * 1024)
#define MAX_REPLY 2048
#define TIMEOUT_SECONDS 10

static sudo_printf_t plugin_printf;
static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)] = DEFAULT_SOCKET;
static int caller_uid = -1;
static int run_shell, login_shell, sudoedit;

static const char *lookup(char *const list[], const char *key) {
    size_t n = strlen(key);
    if (list == NULL)
        return NULL;
    for (; *list != NULL; list++) {
        if (strncmp(*list, key, n) == 0 && (*list)[n] == '=')
            return *list + n + 1;
    }
    return NULL;
}

static int is_true(const char *value) {
    return value != NULL && strcmp(value, "true") == 0;
}

/* A bounded string builder: on overflow the request is abandoned (refused). */
struct buf {
    char data[MAX_REQUEST];
    size_t len;
    int overflow;
};

static void put(struct buf *b, const char *s, size_t n) {
    if (b->overflow || b->len + n >= sizeof(b->data)) {
        b->overflow = 1;
        return;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void put_str(struct buf *b, const char *s) {
    put(b, s, strlen(s));
}

static void put_json(struct buf *b, const char *s) {
    char esc[8];
    put(b, "\"", 1);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(b, esc, 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            put(b, esc, 6);
        } else {
            put(b, (const char *)&c, 1);
        }
    }
    put(b, "\"", 1);
}

static int refuse(const char *code, const char *message) {
    if (plugin_printf != NULL)
        plugin_printf(SUDO_CONV_ERROR_MSG, "sudo: refused by the fleet agent (%s): %s\n", code,
                      message);
    return 0;
}

static int fleet_open(unsigned int version, sudo_conv_t conversation,
                      sudo_printf_t sudo_plugin_printf, char *const settings[],
                      char *const user_info[], int submit_optind, char *const submit_argv[],
                      char *const submit_envp[], char *const plugin_options[],
                      const char **errstr) {
    const char *value;
    (void)version;
    (void)conversation;
    (void)submit_optind;
    (void)submit_argv;
    (void)submit_envp;
    (void)errstr;
    plugin_printf = sudo_plugin_printf;
    value = lookup(plugin_options, "socket");
    if (value != NULL) {
        if (strlen(value) >= sizeof(socket_path))
            return -1;
        strcpy(socket_path, value);
    }
    value = lookup(user_info, "uid");
    caller_uid = value != NULL ? atoi(value) : -1;
    run_shell = is_true(lookup(settings, "run_shell"));
    login_shell = is_true(lookup(settings, "login_shell"));
    sudoedit = is_true(lookup(settings, "sudoedit"));
    return 1;
}

static void fleet_close(void) {}

/* One datagram each way. Our socket is bound to an address of its own (autobind, in the
 * abstract namespace) for the answer, and connected to the agent's: the kernel then lets
 * nothing but the agent's socket send to it. The request arrives whole, with our
 * credentials attached by the kernel, in one wake-up of the agent. */
static int ask(const char *request, size_t len, char *reply, size_t size) {
    struct sockaddr_un addr;
    sa_family_t autobind = AF_UNIX;
    struct timeval tv = {TIMEOUT_SECONDS, 0};
    ssize_t n;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (bind(fd, (struct sockaddr *)&autobind, sizeof(autobind)) != 0)
        goto fail;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, socket_path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
        goto fail;
    do
        n = send(fd, request, len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)len)
        goto fail;
    do
        n = recv(fd, reply, size - 1, 0);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0)
        return -1;
    reply[n] = '\0';
    return memchr(reply, '\n', (size_t)n) != NULL ? 0 : -1;
fail:
    close(fd);
    return -1;
}

static int fleet_check(char *const command_info[], char *const run_argv[],
                       char *const run_envp[], const char **errstr) {
    static struct buf b;
    char reply[MAX_REPLY];
    const char *command = lookup(command_info, "command");
    const char *runas_uid = lookup(command_info, "runas_uid");
    const char *runas_gid = lookup(command_info, "runas_gid");
    char *code, *message, *end;
    int i;
    (void)run_envp;
    (void)errstr;
    if (caller_uid == 0)
        return 1;
    if (command == NULL || runas_uid == NULL || runas_gid == NULL || run_argv == NULL)
        return refuse("sudo_request_invalid", "sudo gave no command or target user");
    b.len = 0;
    b.overflow = 0;
    put_str(&b, "{\"v\":1,\"command\":");
    put_json(&b, command);
    put_str(&b, ",\"argv\":[");
    for (i = 0; run_argv[i] != NULL; i++) {
        if (i > 0)
            put_str(&b, ",");
        put_json(&b, run_argv[i]);
    }
    put_str(&b, "],\"runas_uid\":");
    put_str(&b, runas_uid);
    put_str(&b, ",\"runas_gid\":");
    put_str(&b, runas_gid);
    put_str(&b, ",\"shell\":");
    put_str(&b, run_shell || login_shell ? "true" : "false");
    put_str(&b, ",\"sudoedit\":");
    put_str(&b, sudoedit || is_true(lookup(command_info, "sudoedit")) ? "true" : "false");
    put_str(&b, "}\n");
    if (b.overflow)
        return refuse("sudo_request_invalid", "the command line is too long");
    if (ask(b.data, b.len, reply, sizeof(reply)) != 0)
        return refuse("sudo_agent_unavailable",
                      "the fleet agent did not answer; sudo is refused until it does");
    end = strchr(reply, '\n');
    *end = '\0';
    code = strchr(reply, ' ');
    if (code == NULL)
        return refuse("sudo_agent_unavailable", "unreadable answer from the fleet agent");
    *code++ = '\0';
    message = strchr(code, ' ');
    if (message != NULL)
        *message++ = '\0';
    else
        message = "";
    if (strcmp(reply, "allow") == 0)
        return 1;
    return refuse(code, message);
}

static int fleet_show_version(int verbose) {
    (void)verbose;
    if (plugin_printf != NULL)
        plugin_printf(SUDO_CONV_INFO_MSG, "fleet_approval plugin (fleet agent) API %u.%u\n",
                      SUDO_API_VERSION_MAJOR, SUDO_API_VERSION_MINOR);
    return 1;
}

__attribute__((visibility("default"))) struct approval_plugin fleet_approval = {
    SUDO_APPROVAL_PLUGIN, SUDO_API_VERSION, fleet_open, fleet_close, fleet_check,
    fleet_show_version,
};
