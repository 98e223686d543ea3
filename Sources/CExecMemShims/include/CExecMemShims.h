// CExecMemShims: the few kernel interfaces Swift's Glibc module does not import.
//
// glibc declares memfd_create, fallocate and MAP_FIXED_NOREPLACE only under _GNU_SOURCE, and has no
// wrapper for membarrier(2) at all; MADV_COLLAPSE is newer than some glibc headers. Everything here is
// a constant or a one-line forwarder, so the Swift system layer stays the only place with logic.
#ifndef CEXECMEM_SHIMS_H
#define CEXECMEM_SHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// memfd_create(2) flags.
static const unsigned int cem_MFD_CLOEXEC = 0x0001U;
static const unsigned int cem_MFD_HUGETLB = 0x0004U;
static const unsigned int cem_MFD_HUGE_2MB = 21U << 26;  // MFD_HUGE_SHIFT = 26, log2(2 MiB) = 21

// mmap(2) flags and madvise(2) advice that may be missing from Swift's view.
static const int cem_MAP_FIXED_NOREPLACE = 0x100000;
static const int cem_MAP_NORESERVE = 0x4000;
static const int cem_MAP_HUGETLB = 0x40000;
static const int cem_MADV_HUGEPAGE = 14;
static const int cem_MADV_NOHUGEPAGE = 15;
static const int cem_MADV_POPULATE_WRITE = 23;
static const int cem_MADV_COLLAPSE = 25;

// fallocate(2) modes.
static const int cem_FALLOC_FL_KEEP_SIZE = 0x01;
static const int cem_FALLOC_FL_PUNCH_HOLE = 0x02;

// membarrier(2) commands (linux/membarrier.h).
static const int cem_MEMBARRIER_CMD_QUERY = 0;
static const int cem_MEMBARRIER_CMD_PRIVATE_EXPEDITED = 1 << 3;
static const int cem_MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED = 1 << 4;
static const int cem_MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE = 1 << 5;
static const int cem_MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE = 1 << 6;

/// memfd_create(2). Returns a file descriptor or -1 with errno set.
int cem_memfd_create(const char *name, unsigned int flags);

/// fallocate(2). Returns 0 or -1 with errno set.
int cem_fallocate(int fd, int mode, off_t offset, off_t length);

/// membarrier(2) through syscall(2); glibc has no wrapper. Returns the syscall's result, -1 and errno on error.
long cem_membarrier(int cmd, unsigned int flags);

/// mremap(2) with old_size 0 and MREMAP_MAYMOVE (plus MREMAP_FIXED when `to` is not NULL): a second
/// mapping of the same pages of a shared mapping. Returns the new address or MAP_FAILED with errno set.
void *cem_mremap_again(void *source, size_t length, void *to);

/// gettid(2).
long cem_gettid(void);

/// The calling thread's errno, read right after the call it belongs to.
int cem_errno(void);

#endif
