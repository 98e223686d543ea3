// CExecMemCrash: the CLI's crash report for code ExecMem holds.
//
// When code faults (SIGSEGV, SIGBUS, SIGILL, SIGFPE, or SIGTRAP from the int3 fill), the handler
// prints the faulting PC as `name+0xoff [owner]` from the code registry's signal-safe table
// (CExecMemCrashTable.h), then the frame-pointer chain, each frame named the same way, and dies of
// the same signal with its default action, so the exit status stays "killed by signal N".
#ifndef CEXECMEM_CRASH_H
#define CEXECMEM_CRASH_H

/// Installs the handler for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGTRAP on an alternate stack (for
/// the calling thread) and prefixes reports with `program`. Call once, before code is loaded and
/// before anything installs a SIGTRAP handler of its own: live patching's (CExecMemProbeRuntime)
/// hands the traps that are not its own to the handler it found, this one. Returns 0, or -1 with errno.
int cem_crash_install(const char *program);

#endif
