/* fv2es_preload.so: what keeps the other users of the host away from tritonserver and its stubs.
 * fv2es.tritonserver.EmbeddedServer preloads it (LD_PRELOAD) into tritonserver, whose children (the
 * Python backend's stubs) inherit it. Built by `make` into the venv:
 *     cc -shared -fPIC -O2 -o .venv/lib/fv2es/fv2es_preload.so fv2es_preload.c
 *
 * 1. The admin key stays off the command line, which every local user reads (/proc/<pid>/cmdline,
 * `ps`). tritonserver takes the key only as an option, so EmbeddedServer starts it with the key's
 * place left empty ("...:fv2es-admin-key=", which tritonserver rejects: without this library it does
 * not start), the key in FV2ES_ARGV_SECRET and that place in FV2ES_ARGV_SECRET_AFTER (the environment
 * is readable by the same user and root only: /proc/<pid>/environ). glibc calls the constructors of
 * preloaded libraries with (argc, argv, envp) before main(), and argv is the array main() gets: the
 * constructor points each argv[i] that ends with the place at a heap copy with the key appended, so
 * main() parses the key while the memory behind /proc/<pid>/cmdline keeps the empty place. Then it
 * blanks the key in the environment block (the memory behind /proc/<pid>/environ) and removes both
 * variables, so that the stubs never get them. In a process without them (a stub) it changes nothing.
 * The names are config.ARGV_SECRET_ENV and config.ARGV_SECRET_AFTER_ENV.
 *
 * 2. The stubs' /dev/shm regions, which carry every request's inputs and outputs, are for this user
 * only. The Python backend creates them with boost::interprocess, which fchmod()s them to 0644 past
 * the umask (readable by every local user); fchmod() below drops the group and other bits of a
 * file in /dev/shm.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SECRET_ENV "FV2ES_ARGV_SECRET"
#define AFTER_ENV "FV2ES_ARGV_SECRET_AFTER"
#define SHM_DIR "/dev/shm/"

__attribute__((constructor)) static void splice_secret(int argc, char **argv, char **envp) {
    (void)envp;  /* getenv() reads the same block */
    char *secret = getenv(SECRET_ENV);
    const char *after = getenv(AFTER_ENV);
    if (secret && *secret && after && *after && argv) {
        size_t secret_len = strlen(secret), after_len = strlen(after);
        for (int i = 1; i < argc && argv[i]; i++) {
            size_t len = strlen(argv[i]);
            if (len < after_len || strcmp(argv[i] + len - after_len, after) != 0)
                continue;
            char *arg = malloc(len + secret_len + 1);
            if (!arg)
                continue;  /* the place stays empty: tritonserver refuses to start */
            memcpy(arg, argv[i], len);
            memcpy(arg + len, secret, secret_len + 1);
            argv[i] = arg;  /* the original string, which /proc/<pid>/cmdline shows, is untouched */
        }
    }
    if (secret)
        explicit_bzero(secret, strlen(secret));  /* in place: getenv() points into the block */
    unsetenv(SECRET_ENV);
    unsetenv(AFTER_ENV);
}

int fchmod(int fd, mode_t mode) {
    char link[32], target[sizeof SHM_DIR - 1];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target);  /* only the start is needed */
    if (n == (ssize_t)sizeof target && memcmp(target, SHM_DIR, sizeof target) == 0)
        mode &= ~(mode_t)(S_IRWXG | S_IRWXO);
    return (int)syscall(SYS_fchmod, fd, mode);
}
