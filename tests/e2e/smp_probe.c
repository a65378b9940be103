/* smp_probe: what a multi-vCPU Linux guest must get right, checked from
 * inside it (tests/e2e/smp_vm_test.cc pushes this static binary into the
 * guest through the agent and runs it).
 *
 *   smp_probe tlb ROUNDS SECONDS
 *     Two threads, pinned to CPU 0 and CPU 1, share a page. Each round the
 *     reader on CPU 1 reads the page (so its TLB holds the mapping), then the
 *     writer on CPU 0 replaces the mapping with a new page (mmap MAP_FIXED)
 *     holding a new value, and the reader reads again while it kept
 *     spinning in user space on CPU 1 the whole time. A lost TLB flush (the
 *     shootdown IPI, or KVM's PV TLB flush of a preempted vCPU) shows as the
 *     old value (or whatever the freed page holds by then).
 *   smp_probe clock ROUNDS SECONDS
 *     Two threads pinned to CPU 0 and CPU 1 pass a token; each reads
 *     CLOCK_MONOTONIC on taking it and checks that the time is not before
 *     the other CPU's last reading (the clock is one clock across vCPUs).
 *
 * Each mode stops after ROUNDS rounds or SECONDS seconds, whichever comes
 * first, and prints one line "smp_probe MODE: rounds=N errors=E ..."; exit
 * 0 when E is 0 and at least one round ran, 1 otherwise, 2 on bad usage or
 * a failed system call. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static long rounds_max;
static double seconds_max;
static _Atomic int phase;   /* tlb: 0 idle, 1 read, 2 was read, 3 replaced */
static _Atomic int stop;
static volatile uint64_t* page;
static long errors, rounds_done;
static uint64_t first_bad_seen, first_bad_want;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}
static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char* what) {
  fprintf(stderr, "smp_probe: %s: %s\n", what, strerror(errno));
  exit(2);
}

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  int err = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
  if (err != 0) {
    errno = err;
    die("pthread_setaffinity_np");
  }
  if (sched_getcpu() != cpu) {
    fprintf(stderr, "smp_probe: pinned to cpu %d, running on %d\n", cpu, sched_getcpu());
    exit(2);
  }
}

static void wait_phase(int want) {
  while (atomic_load(&phase) != want) {
    if (atomic_load(&stop)) pthread_exit(NULL);
  }
}

static void* tlb_reader(void* arg) {
  (void)arg;
  pin(1);
  for (long i = 0;; ++i) {
    wait_phase(1);
    uint64_t v = *page;
    if (v != (uint64_t)(2 * i)) {
      if (errors++ == 0) first_bad_seen = v, first_bad_want = 2 * i;
    }
    atomic_store(&phase, 2);
    wait_phase(3);
    v = *page; /* the writer replaced the page meanwhile */
    if (v != (uint64_t)(2 * i + 1)) {
      if (errors++ == 0) first_bad_seen = v, first_bad_want = 2 * i + 1;
    }
    atomic_store(&phase, 0);
  }
  return NULL;
}

static int run_tlb(void) {
  page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) die("mmap");
  pthread_t reader;
  if (pthread_create(&reader, NULL, tlb_reader, NULL) != 0) die("pthread_create");
  pin(0);
  double deadline = now_s() + seconds_max;
  long i = 0;
  for (; i < rounds_max && now_s() < deadline; ++i) {
    *page = 2 * i;
    atomic_store(&phase, 1);
    wait_phase(2);
    /* A new page at the same address; the old one goes back to the kernel
     * (and may be handed out again at once, so a stale TLB entry on CPU 1
     * reads someone else's memory). */
    void* fresh = mmap((void*)page, 4096, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (fresh != (void*)page) die("mmap MAP_FIXED");
    *page = 2 * i + 1;
    atomic_store(&phase, 3);
    wait_phase(0);
    rounds_done = i + 1;
  }
  atomic_store(&stop, 1);
  pthread_join(reader, NULL);
  printf("smp_probe tlb: rounds=%ld errors=%ld", rounds_done, errors);
  if (errors) printf(" first: read %llu, wanted %llu",
                     (unsigned long long)first_bad_seen, (unsigned long long)first_bad_want);
  printf("\n");
  return errors == 0 && rounds_done > 0 ? 0 : 1;
}

/* clock: the token is the round number; even rounds belong to CPU 0. */
static _Atomic long token;
static _Atomic int64_t last_ns;
static int64_t worst_back_ns;
static int64_t last_seen[2];

static void clock_side(int cpu) {
  for (long r = cpu;; r += 2) {
    while (atomic_load(&token) != r) {
      if (atomic_load(&stop)) return;
    }
    int64_t t = now_ns();
    int64_t prev = atomic_load(&last_ns);
    if (t < prev) {
      ++errors;
      if (prev - t > worst_back_ns) worst_back_ns = prev - t;
    }
    last_seen[cpu] = t;
    atomic_store(&last_ns, t);
    rounds_done = r + 1;
    atomic_store(&token, r + 1);
  }
}

static void* clock_other(void* arg) {
  (void)arg;
  pin(1);
  clock_side(1);
  return NULL;
}

static int run_clock(void) {
  pthread_t other;
  if (pthread_create(&other, NULL, clock_other, NULL) != 0) die("pthread_create");
  pin(0);
  double deadline = now_s() + seconds_max;
  /* CPU 0's side, with the bounds checked between its turns. */
  for (long r = 0; r < rounds_max; r += 2) {
    while (atomic_load(&token) != r) {
      if (now_s() > deadline) goto out;
    }
    int64_t t = now_ns();
    int64_t prev = atomic_load(&last_ns);
    if (t < prev) {
      ++errors;
      if (prev - t > worst_back_ns) worst_back_ns = prev - t;
    }
    last_seen[0] = t;
    atomic_store(&last_ns, t);
    rounds_done = r + 1;
    atomic_store(&token, r + 1);
  }
out:
  atomic_store(&stop, 1);
  pthread_join(other, NULL);
  printf("smp_probe clock: rounds=%ld errors=%ld worst_back_ns=%lld cpu0_ns=%lld cpu1_ns=%lld\n",
         rounds_done, errors, (long long)worst_back_ns, (long long)last_seen[0],
         (long long)last_seen[1]);
  return errors == 0 && rounds_done > 1 ? 0 : 1;
}

int main(int argc, char** argv) {
  if (argc != 4 || (rounds_max = atol(argv[2])) <= 0 ||
      (seconds_max = atof(argv[3])) <= 0) {
    fprintf(stderr, "usage: smp_probe tlb|clock ROUNDS SECONDS\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (strcmp(argv[1], "tlb") == 0) return run_tlb();
  if (strcmp(argv[1], "clock") == 0) return run_clock();
  fprintf(stderr, "smp_probe: unknown mode %s\n", argv[1]);
  return 2;
}
