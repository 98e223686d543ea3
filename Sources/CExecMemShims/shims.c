// Forwarders for CExecMemShims.h; see there for why they exist.
#define _GNU_SOURCE
#include "CExecMemShims.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int cem_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }

int cem_fallocate(int fd, int mode, off_t offset, off_t length) { return fallocate(fd, mode, offset, length); }

long cem_membarrier(int cmd, unsigned int flags) { return syscall(SYS_membarrier, cmd, flags, 0); }

int cem_errno(void) { return errno; }

void *cem_mremap_again(void *source, size_t length, void *to) {
    if (to) return mremap(source, 0, length, MREMAP_MAYMOVE | MREMAP_FIXED, to);
    return mremap(source, 0, length, MREMAP_MAYMOVE);
}

long cem_gettid(void) { return syscall(SYS_gettid); }
