# System interfaces the hot loop calls without the GIL.
#
# Only what the engine needs: vectored send/receive, poll for timeouts,
# SO_RCVTIMEO for the one blocking receive (a large body with nothing left to
# send), shutdown to wake a blocked worker from another thread.

from libc.errno cimport errno, EINTR, EAGAIN

cdef extern from "<errno.h>" nogil:
    int EWOULDBLOCK
from libc.stdint cimport int64_t, uint64_t, uint8_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memchr, memcmp, strerror


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t readv(int fd, const iovec *iov, int iovcnt)


cdef extern from "<sys/socket.h>" nogil:
    struct msghdr:
        void *msg_name
        int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t recvmsg(int fd, msghdr *msg, int flags)
    int setsockopt(int fd, int level, int optname, const void *optval, unsigned int optlen)
    int SOL_SOCKET
    int SO_RCVTIMEO
    int SO_SNDTIMEO
    int MSG_WAITALL
    int shutdown(int fd, int how)
    int SHUT_RDWR
    int MSG_NOSIGNAL
    int MSG_DONTWAIT


cdef extern from "<fcntl.h>" nogil:
    int fcntl(int fd, int cmd, ...)
    int F_GETFL
    int O_NONBLOCK


cdef extern from "<sys/time.h>" nogil:
    struct timeval:
        long tv_sec
        long tv_usec


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLOUT
    short POLLERR
    short POLLHUP


cdef extern from "<string.h>" nogil:
    void *memset(void *s, int c, size_t n)
    void *memmove(void *dst, const void *src, size_t n)


cdef extern from *:
    """
    /* Debug checks: compiled in only when setup.py is run with
       LMCACHE_VALKEY_DEBUG=1 (CI builds both flavours), like asyncpg's
       debug macros. Release builds pay nothing for them. */
    #ifndef LMV_DEBUG
    #define LMV_DEBUG 0
    #endif
    /* Linux caps one vectored call at 1024 segments (IOV_MAX). */
    #define LMV_IOV_MAX 1024
    """
    const bint LMV_DEBUG
    const int LMV_IOV_MAX
