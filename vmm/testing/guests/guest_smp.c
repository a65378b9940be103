/* Several vCPUs without Linux: the boot CPU finds the others in the VMM's
 * MP table, starts each through INIT and Startup IPIs into a real-mode
 * trampoline (smp_trampoline.S), and then every CPU adds to one shared
 * counter with locked instructions while the others do the same. The
 * guest prints what each CPU reported and whether the sum is exact, then
 * reboots. With "sbx.smp=hypercall" on the command line an AP also makes
 * one KVM hypercall (an unknown number, which KVM answers with
 * -KVM_ENOSYS) and the boot CPU reports whether it returned. */
#include "guest.h"

#define AP_TRAMPOLINE 0x30000ULL /* below 1 MiB, above the VMM's structures */
#define LAPIC 0xfee00000ULL
#define LAPIC_ID 0x20
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_INIT 0x00004500u /* delivery mode INIT, level assert */
#define ICR_STARTUP 0x00004600u
#define ICR_PENDING (1u << 12)
#define MAX_CPUS 32
#define ROUNDS 20000
/* TSC ticks to wait for another CPU: seconds on any host, so a guest
 * under emulation still gets there and a stuck one still ends. */
#define WAIT_TICKS 60000000000ULL

extern char ap_trampoline_start[], ap_trampoline_end[];
extern char ap_tramp_cr3[], ap_tramp_stack[], ap_tramp_entry[];

static uint8_t ap_stacks[MAX_CPUS][4096] __attribute__((aligned(16)));
static volatile uint64_t counter;
static volatile uint32_t started[MAX_CPUS];   /* 1 + the CPU's APIC id */
static volatile uint32_t cpuid_apic[MAX_CPUS]; /* CPUID.1:EBX[31:24] */
static volatile uint32_t finished;
static volatile uint32_t go;
static volatile uint32_t hypercall_wanted;
static volatile uint32_t hypercall_done;
static volatile uint64_t hypercall_rax;

static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ volatile("pause"); }
static inline void cpuid(uint32_t leaf, uint32_t* a, uint32_t* b, uint32_t* c,
                         uint32_t* d) {
  __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d)
                   : "a"(leaf), "c"(0));
}
static uint32_t lapic_id(void) { return mmio_read32(LAPIC + LAPIC_ID) >> 24; }

static int mem_eq(const char* a, const char* b, int n) {
  for (int i = 0; i < n; ++i) {
    if (a[i] != b[i]) return 0;
  }
  return 1;
}
static int contains(const char* s, const char* word) {
  for (; *s; ++s) {
    const char *p = s, *w = word;
    while (*w && *p == *w) ++p, ++w;
    if (!*w) return 1;
  }
  return 0;
}
static uint8_t sum_bytes(const uint8_t* p, uint32_t n) {
  uint8_t s = 0;
  for (uint32_t i = 0; i < n; ++i) s = (uint8_t)(s + p[i]);
  return s;
}

/* MP spec 1.4 §4: the floating pointer on a 16-byte boundary in the EBDA
 * or the BIOS area, then the configuration table it points at. */
static const uint8_t* find_mp_config(void) {
  static const uint64_t ranges[][2] = {{0x9fc00, 0xa0000}, {0xf0000, 0x100000}};
  for (int r = 0; r < 2; ++r) {
    for (uint64_t a = ranges[r][0]; a + 16 <= ranges[r][1]; a += 16) {
      const uint8_t* fp = (const uint8_t*)a;
      if (!mem_eq((const char*)fp, "_MP_", 4) || sum_bytes(fp, 16) != 0) continue;
      uint32_t table = *(const uint32_t*)(fp + 4);
      const uint8_t* cfg = (const uint8_t*)(uint64_t)table;
      uint16_t len = *(const uint16_t*)(cfg + 4);
      if (!mem_eq((const char*)cfg, "PCMP", 4) || sum_bytes(cfg, len) != 0) return 0;
      return cfg;
    }
  }
  return 0;
}

static void count(void) {
  for (uint32_t i = 0; i < ROUNDS; ++i) {
    __asm__ volatile("lock incq %0" : "+m"(counter));
  }
}

/* The vendor's own instruction; hypercall_site is where it is, so the boot
 * CPU can show whether KVM rewrote it (KVM patches a foreign one). */
static const volatile uint8_t* volatile hypercall_site;
__attribute__((noinline)) static uint64_t hypercall(uint64_t nr) {
  uint32_t a, b, c, d;
  cpuid(0, &a, &b, &c, &d);
  uint64_t rax = nr;
  if (b == 0x68747541) { /* "Auth": AMD's VMMCALL */
    __asm__ volatile("lea 1f(%%rip), %%rdx\n mov %%rdx, %1\n1: vmmcall"
                     : "+a"(rax), "=m"(hypercall_site) : : "rdx", "memory");
  } else {               /* Intel's VMCALL */
    __asm__ volatile("lea 1f(%%rip), %%rdx\n mov %%rdx, %1\n1: vmcall"
                     : "+a"(rax), "=m"(hypercall_site) : : "rdx", "memory");
  }
  return rax;
}

__attribute__((noreturn)) void ap_main(void) {
  uint32_t id = lapic_id();
  uint32_t a, b, c, d;
  cpuid(1, &a, &b, &c, &d);
  if (id < MAX_CPUS) {
    cpuid_apic[id] = b >> 24;
    started[id] = id + 1;
  }
  while (!go) cpu_relax();
  count();
  __asm__ volatile("lock incl %0" : "+m"(finished));
  if (hypercall_wanted && id == 1) {
    hypercall_rax = hypercall(0x7fff);
    hypercall_done = 1;
  }
  for (;;) cpu_relax();
}

static int wait_ticks(volatile uint32_t* word, uint32_t value, uint64_t ticks) {
  uint64_t deadline = rdtsc() + ticks;
  while (*word != value) {
    if (rdtsc() > deadline) return 0;
    cpu_relax();
  }
  return 1;
}
static int wait_for(volatile uint32_t* word, uint32_t value) {
  return wait_ticks(word, value, WAIT_TICKS);
}

static void send_ipi(uint32_t apic, uint32_t icr) {
  mmio_write32(LAPIC + LAPIC_ICR_HI, apic << 24);
  mmio_write32(LAPIC + LAPIC_ICR_LO, icr);
  while (mmio_read32(LAPIC + LAPIC_ICR_LO) & ICR_PENDING) cpu_relax();
}

void guest_main(const struct hvm_start_info* info) {
  const char* cmdline = (const char*)info->cmdline_paddr;
  hypercall_wanted = contains(cmdline, "sbx.smp=hypercall");
  const uint8_t* cfg = find_mp_config();
  if (!cfg) {
    serial_puts("smp: FAILED: no valid MP table\n");
    return;
  }
  uint32_t bsp = lapic_id();
  uint32_t aps[MAX_CPUS];
  uint32_t n_aps = 0, n_cpus = 0;
  uint16_t entries = *(const uint16_t*)(cfg + 34);
  const uint8_t* e = cfg + 44;
  for (uint16_t i = 0; i < entries; ++i) {
    if (e[0] != 0) { /* not a processor: 8-byte entry */
      e += 8;
      continue;
    }
    if (e[3] & 1) { /* enabled */
      ++n_cpus;
      if (!(e[3] & 2) && e[1] != bsp && n_aps < MAX_CPUS) aps[n_aps++] = e[1];
    }
    e += 20;
  }
  serial_puts("smp: the MP table lists ");
  serial_put_dec(n_cpus);
  serial_puts(" cpus; boot cpu apic id ");
  serial_put_dec(bsp);
  serial_puts("\n");
  /* KVM's paravirtual features, as the VMM lets this guest see them. */
  uint32_t a, b, c, d;
  cpuid(0x40000000, &a, &b, &c, &d);
  if (b == 0x4b4d564b && c == 0x564b4d56 && d == 0x4d) { /* "KVMKVMKVM" */
    cpuid(0x40000001, &a, &b, &c, &d);
    serial_puts("smp: kvm features=");
    serial_put_hex(a);
    serial_puts("\n");
  }

  /* The trampoline and its three words: page tables, stack, entry. */
  uint64_t cr3;
  __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
  volatile uint8_t* dst = (volatile uint8_t*)AP_TRAMPOLINE;
  for (char* p = ap_trampoline_start; p < ap_trampoline_end; ++p) {
    dst[p - ap_trampoline_start] = (uint8_t)*p;
  }
#define TRAMP_WORD(sym) \
  (*(volatile uint64_t*)(AP_TRAMPOLINE + (uint64_t)((sym) - ap_trampoline_start)))
  TRAMP_WORD(ap_tramp_cr3) = cr3;
  TRAMP_WORD(ap_tramp_entry) = (uint64_t)ap_main;

  int ok = 1;
  for (uint32_t i = 0; i < n_aps; ++i) {
    uint32_t apic = aps[i];
    if (apic >= MAX_CPUS) {
      serial_puts("smp: FAILED: apic id out of range\n");
      return;
    }
    /* One AP at a time: each takes the trampoline's stack word. */
    TRAMP_WORD(ap_tramp_stack) = (uint64_t)&ap_stacks[i][4096 - 8];
    send_ipi(apic, ICR_INIT);
    send_ipi(apic, ICR_STARTUP | (uint32_t)(AP_TRAMPOLINE >> 12));
    if (!wait_for(&started[apic], apic + 1)) {
      /* SDM §8.4.4.1 sends a second SIPI when the first is lost. */
      send_ipi(apic, ICR_STARTUP | (uint32_t)(AP_TRAMPOLINE >> 12));
      if (!wait_for(&started[apic], apic + 1)) {
        serial_puts("smp: FAILED: cpu with apic id ");
        serial_put_dec(apic);
        serial_puts(" did not start\n");
        ok = 0;
        continue;
      }
    }
    serial_puts("smp: cpu ");
    serial_put_dec(apic);
    serial_puts(" up, cpuid apic id ");
    serial_put_dec(cpuid_apic[apic]);
    serial_puts("\n");
  }
  if (!ok) return;

  go = 1;
  count();
  if (!wait_for(&finished, n_aps)) {
    serial_puts("smp: FAILED: the application processors did not finish\n");
    return;
  }
  uint64_t want = (uint64_t)(n_aps + 1) * ROUNDS;
  serial_puts("smp: counter=");
  serial_put_dec(counter);
  serial_puts(" expected=");
  serial_put_dec(want);
  serial_puts(counter == want ? " ok\n" : " FAILED\n");
  if (counter != want) return;
  if (hypercall_wanted && n_aps > 0) {
    /* A hypercall takes microseconds where it works: a tenth of the wait. */
    if (wait_ticks(&hypercall_done, 1, WAIT_TICKS / 10)) {
      serial_puts("smp: hypercall returned rax=-");
      serial_put_dec((uint64_t)(-(int64_t)hypercall_rax));
      serial_puts("\n");
    } else {
      serial_puts("smp: hypercall did not return; its bytes now:");
      for (int i = 0; hypercall_site && i < 3; ++i) {
        serial_puts(" ");
        serial_put_hex(hypercall_site[i]);
      }
      serial_puts("\n");
    }
  }
  serial_puts("smp: all ");
  serial_put_dec(n_aps + 1);
  serial_puts(" cpus done\n");
}
