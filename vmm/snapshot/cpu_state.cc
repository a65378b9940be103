#include "vmm/snapshot/cpu_state.h"

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace sbx::vmm::snapshot {
namespace {

namespace pb = ::sbx::vmstate::v1;

// A size mismatch in a restored area: the file is corrupt or from another
// architecture.
absl::Status BadSize(const char* what, size_t got, size_t want) {
  return absl::DataLossError(absl::StrCat("vmstate: ", what, " is ", got,
                                          " long, KVM's is ", want));
}

std::string AsBytes(const void* data, size_t size) {
  return std::string(static_cast<const char*>(data), size);
}

// ---- Registers.

pb::Regs ToProto(const kvm_regs& r) {
  pb::Regs p;
  p.set_rax(r.rax); p.set_rbx(r.rbx); p.set_rcx(r.rcx); p.set_rdx(r.rdx);
  p.set_rsi(r.rsi); p.set_rdi(r.rdi); p.set_rsp(r.rsp); p.set_rbp(r.rbp);
  p.set_r8(r.r8); p.set_r9(r.r9); p.set_r10(r.r10); p.set_r11(r.r11);
  p.set_r12(r.r12); p.set_r13(r.r13); p.set_r14(r.r14); p.set_r15(r.r15);
  p.set_rip(r.rip); p.set_rflags(r.rflags);
  return p;
}

kvm_regs FromProto(const pb::Regs& p) {
  kvm_regs r = {};
  r.rax = p.rax(); r.rbx = p.rbx(); r.rcx = p.rcx(); r.rdx = p.rdx();
  r.rsi = p.rsi(); r.rdi = p.rdi(); r.rsp = p.rsp(); r.rbp = p.rbp();
  r.r8 = p.r8(); r.r9 = p.r9(); r.r10 = p.r10(); r.r11 = p.r11();
  r.r12 = p.r12(); r.r13 = p.r13(); r.r14 = p.r14(); r.r15 = p.r15();
  r.rip = p.rip(); r.rflags = p.rflags();
  return r;
}

void ToProto(const kvm_segment& s, pb::Segment* p) {
  p->set_base(s.base); p->set_limit(s.limit); p->set_selector(s.selector);
  p->set_type(s.type); p->set_present(s.present); p->set_dpl(s.dpl);
  p->set_db(s.db); p->set_s(s.s); p->set_l(s.l); p->set_g(s.g);
  p->set_avl(s.avl); p->set_unusable(s.unusable);
}

kvm_segment FromProto(const pb::Segment& p) {
  kvm_segment s = {};
  s.base = p.base();
  s.limit = p.limit();
  s.selector = static_cast<uint16_t>(p.selector());
  s.type = static_cast<uint8_t>(p.type());
  s.present = p.present(); s.dpl = static_cast<uint8_t>(p.dpl());
  s.db = p.db(); s.s = p.s(); s.l = p.l(); s.g = p.g(); s.avl = p.avl();
  s.unusable = p.unusable();
  return s;
}

void ToProto(const kvm_dtable& t, pb::DescriptorTable* p) {
  p->set_base(t.base);
  p->set_limit(t.limit);
}

kvm_dtable FromProto(const pb::DescriptorTable& p) {
  kvm_dtable t = {};
  t.base = p.base();
  t.limit = static_cast<uint16_t>(p.limit());
  return t;
}

pb::Sregs ToProto(const kvm_sregs& s) {
  pb::Sregs p;
  ToProto(s.cs, p.mutable_cs()); ToProto(s.ds, p.mutable_ds());
  ToProto(s.es, p.mutable_es()); ToProto(s.fs, p.mutable_fs());
  ToProto(s.gs, p.mutable_gs()); ToProto(s.ss, p.mutable_ss());
  ToProto(s.tr, p.mutable_tr()); ToProto(s.ldt, p.mutable_ldt());
  ToProto(s.gdt, p.mutable_gdt()); ToProto(s.idt, p.mutable_idt());
  p.set_cr0(s.cr0); p.set_cr2(s.cr2); p.set_cr3(s.cr3); p.set_cr4(s.cr4);
  p.set_cr8(s.cr8); p.set_efer(s.efer); p.set_apic_base(s.apic_base);
  for (uint64_t word : s.interrupt_bitmap) p.add_interrupt_bitmap(word);
  return p;
}

absl::StatusOr<kvm_sregs> FromProto(const pb::Sregs& p) {
  kvm_sregs s = {};
  s.cs = FromProto(p.cs()); s.ds = FromProto(p.ds()); s.es = FromProto(p.es());
  s.fs = FromProto(p.fs()); s.gs = FromProto(p.gs()); s.ss = FromProto(p.ss());
  s.tr = FromProto(p.tr()); s.ldt = FromProto(p.ldt());
  s.gdt = FromProto(p.gdt()); s.idt = FromProto(p.idt());
  s.cr0 = p.cr0(); s.cr2 = p.cr2(); s.cr3 = p.cr3(); s.cr4 = p.cr4();
  s.cr8 = p.cr8(); s.efer = p.efer(); s.apic_base = p.apic_base();
  constexpr size_t kWords = std::size(kvm_sregs{}.interrupt_bitmap);
  if (static_cast<size_t>(p.interrupt_bitmap_size()) != kWords) {
    return BadSize("sregs.interrupt_bitmap", p.interrupt_bitmap_size(), kWords);
  }
  for (size_t i = 0; i < kWords; ++i) s.interrupt_bitmap[i] = p.interrupt_bitmap(static_cast<int>(i));
  return s;
}

pb::Fpu ToProto(const kvm_fpu& f) {
  pb::Fpu p;
  p.set_fpr(AsBytes(f.fpr, sizeof(f.fpr)));
  p.set_fcw(f.fcw); p.set_fsw(f.fsw); p.set_ftwx(f.ftwx);
  p.set_last_opcode(f.last_opcode); p.set_last_ip(f.last_ip);
  p.set_last_dp(f.last_dp);
  p.set_xmm(AsBytes(f.xmm, sizeof(f.xmm)));
  p.set_mxcsr(f.mxcsr);
  return p;
}

absl::StatusOr<kvm_fpu> FromProto(const pb::Fpu& p) {
  kvm_fpu f = {};
  if (p.fpr().size() != sizeof(f.fpr)) return BadSize("fpu.fpr", p.fpr().size(), sizeof(f.fpr));
  if (p.xmm().size() != sizeof(f.xmm)) return BadSize("fpu.xmm", p.xmm().size(), sizeof(f.xmm));
  std::memcpy(f.fpr, p.fpr().data(), sizeof(f.fpr));
  std::memcpy(f.xmm, p.xmm().data(), sizeof(f.xmm));
  f.fcw = static_cast<uint16_t>(p.fcw()); f.fsw = static_cast<uint16_t>(p.fsw());
  f.ftwx = static_cast<uint8_t>(p.ftwx());
  f.last_opcode = static_cast<uint16_t>(p.last_opcode());
  f.last_ip = p.last_ip(); f.last_dp = p.last_dp(); f.mxcsr = p.mxcsr();
  return f;
}

pb::Xcrs ToProto(const kvm_xcrs& x) {
  pb::Xcrs p;
  p.set_flags(x.flags);
  for (uint32_t i = 0; i < x.nr_xcrs && i < KVM_MAX_XCRS; ++i) {
    pb::Xcrs::Xcr* xcr = p.add_xcrs();
    xcr->set_xcr(x.xcrs[i].xcr);
    xcr->set_value(x.xcrs[i].value);
  }
  return p;
}

absl::StatusOr<kvm_xcrs> FromProto(const pb::Xcrs& p) {
  kvm_xcrs x = {};
  if (p.xcrs_size() > KVM_MAX_XCRS) return BadSize("xcrs", p.xcrs_size(), KVM_MAX_XCRS);
  x.nr_xcrs = static_cast<uint32_t>(p.xcrs_size());
  x.flags = p.flags();
  for (int i = 0; i < p.xcrs_size(); ++i) {
    x.xcrs[i].xcr = p.xcrs(i).xcr();
    x.xcrs[i].value = p.xcrs(i).value();
  }
  return x;
}

pb::DebugRegs ToProto(const kvm_debugregs& d) {
  pb::DebugRegs p;
  for (uint64_t db : d.db) p.add_db(db);
  p.set_dr6(d.dr6); p.set_dr7(d.dr7); p.set_flags(static_cast<uint32_t>(d.flags));
  return p;
}

absl::StatusOr<kvm_debugregs> FromProto(const pb::DebugRegs& p) {
  kvm_debugregs d = {};
  if (p.db_size() != 4) return BadSize("debugregs.db", p.db_size(), 4);
  for (int i = 0; i < 4; ++i) d.db[i] = p.db(i);
  d.dr6 = p.dr6(); d.dr7 = p.dr7(); d.flags = p.flags();
  return d;
}

pb::VcpuEvents ToProto(const kvm_vcpu_events& e) {
  pb::VcpuEvents p;
  p.set_exception_injected(e.exception.injected);
  p.set_exception_nr(e.exception.nr);
  p.set_exception_has_error_code(e.exception.has_error_code);
  p.set_exception_pending(e.exception.pending);
  p.set_exception_error_code(e.exception.error_code);
  p.set_interrupt_injected(e.interrupt.injected);
  p.set_interrupt_nr(e.interrupt.nr);
  p.set_interrupt_soft(e.interrupt.soft);
  p.set_interrupt_shadow(e.interrupt.shadow);
  p.set_nmi_injected(e.nmi.injected);
  p.set_nmi_pending(e.nmi.pending);
  p.set_nmi_masked(e.nmi.masked);
  p.set_sipi_vector(e.sipi_vector);
  p.set_flags(e.flags);
  p.set_smi_smm(e.smi.smm);
  p.set_smi_pending(e.smi.pending);
  p.set_smi_inside_nmi(e.smi.smm_inside_nmi);
  p.set_smi_latched_init(e.smi.latched_init);
  p.set_triple_fault_pending(e.triple_fault.pending);
  p.set_exception_has_payload(e.exception_has_payload);
  p.set_exception_payload(e.exception_payload);
  return p;
}

kvm_vcpu_events FromProto(const pb::VcpuEvents& p) {
  kvm_vcpu_events e = {};
  e.exception.injected = p.exception_injected();
  e.exception.nr = static_cast<uint8_t>(p.exception_nr());
  e.exception.has_error_code = p.exception_has_error_code();
  e.exception.pending = p.exception_pending();
  e.exception.error_code = p.exception_error_code();
  e.interrupt.injected = p.interrupt_injected();
  e.interrupt.nr = static_cast<uint8_t>(p.interrupt_nr());
  e.interrupt.soft = p.interrupt_soft();
  e.interrupt.shadow = static_cast<uint8_t>(p.interrupt_shadow());
  e.nmi.injected = p.nmi_injected();
  e.nmi.pending = p.nmi_pending();
  e.nmi.masked = p.nmi_masked();
  e.sipi_vector = p.sipi_vector();
  // Only what KVM_GET_VCPU_EVENTS marked valid is applied (api.rst,
  // KVM_SET_VCPU_EVENTS).
  e.flags = p.flags();
  e.smi.smm = p.smi_smm();
  e.smi.pending = p.smi_pending();
  e.smi.smm_inside_nmi = p.smi_inside_nmi();
  e.smi.latched_init = static_cast<uint8_t>(p.smi_latched_init());
  e.triple_fault.pending = p.triple_fault_pending();
  e.exception_has_payload = p.exception_has_payload();
  e.exception_payload = p.exception_payload();
  return e;
}

// ---- VM state.

void ToProto(const kvm_pic_state& s, pb::PicState* p) {
  p->set_last_irr(s.last_irr); p->set_irr(s.irr); p->set_imr(s.imr);
  p->set_isr(s.isr); p->set_priority_add(s.priority_add);
  p->set_irq_base(s.irq_base); p->set_read_reg_select(s.read_reg_select);
  p->set_poll(s.poll); p->set_special_mask(s.special_mask);
  p->set_init_state(s.init_state); p->set_auto_eoi(s.auto_eoi);
  p->set_rotate_on_auto_eoi(s.rotate_on_auto_eoi);
  p->set_special_fully_nested_mode(s.special_fully_nested_mode);
  p->set_init4(s.init4); p->set_elcr(s.elcr); p->set_elcr_mask(s.elcr_mask);
}

kvm_pic_state FromProto(const pb::PicState& p) {
  auto u8 = [](uint32_t v) { return static_cast<uint8_t>(v); };
  kvm_pic_state s = {};
  s.last_irr = u8(p.last_irr()); s.irr = u8(p.irr()); s.imr = u8(p.imr());
  s.isr = u8(p.isr()); s.priority_add = u8(p.priority_add());
  s.irq_base = u8(p.irq_base()); s.read_reg_select = u8(p.read_reg_select());
  s.poll = u8(p.poll()); s.special_mask = u8(p.special_mask());
  s.init_state = u8(p.init_state()); s.auto_eoi = u8(p.auto_eoi());
  s.rotate_on_auto_eoi = u8(p.rotate_on_auto_eoi());
  s.special_fully_nested_mode = u8(p.special_fully_nested_mode());
  s.init4 = u8(p.init4()); s.elcr = u8(p.elcr()); s.elcr_mask = u8(p.elcr_mask());
  return s;
}

void ToProto(const kvm_ioapic_state& s, pb::IoapicState* p) {
  p->set_base_address(s.base_address);
  p->set_ioregsel(s.ioregsel);
  p->set_id(s.id);
  p->set_irr(s.irr);
  for (const auto& entry : s.redirtbl) p->add_redirtbl(entry.bits);
}

absl::StatusOr<kvm_ioapic_state> FromProto(const pb::IoapicState& p) {
  kvm_ioapic_state s = {};
  constexpr int kPins = KVM_IOAPIC_NUM_PINS;
  if (p.redirtbl_size() != kPins) return BadSize("ioapic.redirtbl", p.redirtbl_size(), kPins);
  s.base_address = p.base_address();
  s.ioregsel = p.ioregsel();
  s.id = p.id();
  s.irr = p.irr();
  for (int i = 0; i < kPins; ++i) s.redirtbl[i].bits = p.redirtbl(i);
  return s;
}

void ToProto(const kvm_pit_channel_state& c, pb::PitChannel* p) {
  p->set_count(c.count); p->set_latched_count(c.latched_count);
  p->set_count_latched(c.count_latched); p->set_status_latched(c.status_latched);
  p->set_status(c.status); p->set_read_state(c.read_state);
  p->set_write_state(c.write_state); p->set_write_latch(c.write_latch);
  p->set_rw_mode(c.rw_mode); p->set_mode(c.mode); p->set_bcd(c.bcd);
  p->set_gate(c.gate); p->set_count_load_time(c.count_load_time);
}

kvm_pit_channel_state FromProto(const pb::PitChannel& p) {
  auto u8 = [](uint32_t v) { return static_cast<uint8_t>(v); };
  kvm_pit_channel_state c = {};
  c.count = p.count(); c.latched_count = static_cast<uint16_t>(p.latched_count());
  c.count_latched = u8(p.count_latched()); c.status_latched = u8(p.status_latched());
  c.status = u8(p.status()); c.read_state = u8(p.read_state());
  c.write_state = u8(p.write_state()); c.write_latch = u8(p.write_latch());
  c.rw_mode = u8(p.rw_mode()); c.mode = u8(p.mode()); c.bcd = u8(p.bcd());
  c.gate = u8(p.gate()); c.count_load_time = p.count_load_time();
  return c;
}

}  // namespace

absl::StatusOr<KvmStateCaps> ProbeKvmStateCaps(const Kvm& kvm) {
  KvmStateCaps caps;
  caps.xsave = kvm.CheckExtension(KVM_CAP_XSAVE) > 0;
  caps.xcrs = kvm.CheckExtension(KVM_CAP_XCRS) > 0;
  caps.debugregs = kvm.CheckExtension(KVM_CAP_DEBUGREGS) > 0;
  caps.vcpu_events = kvm.CheckExtension(KVM_CAP_VCPU_EVENTS) > 0;
  SBX_ASSIGN_OR_RETURN(caps.msr_indices, kvm.MsrIndexList());
  return caps;
}

absl::StatusOr<pb::VcpuState> SaveVcpu(Vcpu& vcpu, const KvmStateCaps& caps) {
  pb::VcpuState state;
  state.set_index(static_cast<uint32_t>(vcpu.index()));
  SBX_ASSIGN_OR_RETURN(kvm_mp_state mp, vcpu.GetMpState());
  state.set_mp_state(mp.mp_state);
  SBX_ASSIGN_OR_RETURN(kvm_regs regs, vcpu.GetRegs());
  *state.mutable_regs() = ToProto(regs);
  SBX_ASSIGN_OR_RETURN(kvm_sregs sregs, vcpu.GetSregs());
  *state.mutable_sregs() = ToProto(sregs);
  if (caps.xsave) {
    SBX_ASSIGN_OR_RETURN(abi::Xsave xsave, vcpu.GetXsave());
    state.set_xsave(AsBytes(&xsave, sizeof(xsave)));
  } else {
    SBX_ASSIGN_OR_RETURN(kvm_fpu fpu, vcpu.GetFpu());
    *state.mutable_fpu() = ToProto(fpu);
  }
  if (caps.xcrs) {
    SBX_ASSIGN_OR_RETURN(kvm_xcrs xcrs, vcpu.GetXcrs());
    *state.mutable_xcrs() = ToProto(xcrs);
  }
  if (caps.debugregs) {
    SBX_ASSIGN_OR_RETURN(kvm_debugregs debugregs, vcpu.GetDebugRegs());
    *state.mutable_debugregs() = ToProto(debugregs);
  }
  SBX_ASSIGN_OR_RETURN(kvm_lapic_state lapic, vcpu.GetLapic());
  state.set_lapic(AsBytes(lapic.regs, sizeof(lapic.regs)));
  SBX_ASSIGN_OR_RETURN(std::vector<kvm_msr_entry> msrs,
                       vcpu.GetMsrs(caps.msr_indices));
  for (const kvm_msr_entry& msr : msrs) {
    pb::Msr* m = state.add_msrs();
    m->set_index(msr.index);
    m->set_data(msr.data);
  }
  if (caps.vcpu_events) {
    SBX_ASSIGN_OR_RETURN(kvm_vcpu_events events, vcpu.GetVcpuEvents());
    *state.mutable_events() = ToProto(events);
  }
  return state;
}

absl::Status RestoreVcpu(Vcpu& vcpu, const KvmStateCaps& caps,
                         const pb::VcpuState& state) {
  auto lacks = [](const char* what) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the snapshot has ", what, " state, and this host's KVM cannot restore it"));
  };
  kvm_mp_state mp = {};
  mp.mp_state = state.mp_state();
  SBX_RETURN_IF_ERROR(vcpu.SetMpState(mp));
  SBX_RETURN_IF_ERROR(vcpu.SetRegs(FromProto(state.regs())));
  SBX_ASSIGN_OR_RETURN(kvm_sregs sregs, FromProto(state.sregs()));
  SBX_RETURN_IF_ERROR(vcpu.SetSregs(sregs));
  if (!state.xsave().empty()) {
    if (!caps.xsave) return lacks("XSAVE");
    abi::Xsave xsave;
    if (state.xsave().size() != sizeof(xsave)) {
      return BadSize("xsave", state.xsave().size(), sizeof(xsave));
    }
    std::memcpy(&xsave, state.xsave().data(), sizeof(xsave));
    SBX_RETURN_IF_ERROR(vcpu.SetXsave(xsave));
  } else if (state.has_fpu()) {
    SBX_ASSIGN_OR_RETURN(kvm_fpu fpu, FromProto(state.fpu()));
    SBX_RETURN_IF_ERROR(vcpu.SetFpu(fpu));
  }
  if (state.has_xcrs()) {
    if (!caps.xcrs) return lacks("XCRS");
    SBX_ASSIGN_OR_RETURN(kvm_xcrs xcrs, FromProto(state.xcrs()));
    SBX_RETURN_IF_ERROR(vcpu.SetXcrs(xcrs));
  }
  if (state.has_debugregs()) {
    if (!caps.debugregs) return lacks("DEBUGREGS");
    SBX_ASSIGN_OR_RETURN(kvm_debugregs debugregs, FromProto(state.debugregs()));
    SBX_RETURN_IF_ERROR(vcpu.SetDebugRegs(debugregs));
  }
  kvm_lapic_state lapic = {};
  if (state.lapic().size() != sizeof(lapic.regs)) {
    return BadSize("lapic", state.lapic().size(), sizeof(lapic.regs));
  }
  std::memcpy(lapic.regs, state.lapic().data(), sizeof(lapic.regs));
  SBX_RETURN_IF_ERROR(vcpu.SetLapic(lapic));
  std::vector<kvm_msr_entry> msrs;
  msrs.reserve(static_cast<size_t>(state.msrs_size()));
  for (const pb::Msr& m : state.msrs()) {
    kvm_msr_entry entry = {};
    entry.index = m.index();
    entry.data = m.data();
    msrs.push_back(entry);
  }
  if (!msrs.empty()) SBX_RETURN_IF_ERROR(vcpu.SetMsrs(msrs));
  if (state.has_events()) {
    if (!caps.vcpu_events) return lacks("VCPU_EVENTS");
    SBX_RETURN_IF_ERROR(vcpu.SetVcpuEvents(FromProto(state.events())));
  }
  return absl::OkStatus();
}

absl::StatusOr<pb::KvmVmState> SaveVm(const Vm& vm) {
  pb::KvmVmState state;
  SBX_ASSIGN_OR_RETURN(kvm_irqchip master, vm.GetIrqchip(KVM_IRQCHIP_PIC_MASTER));
  ToProto(master.chip.pic, state.mutable_pic_master());
  SBX_ASSIGN_OR_RETURN(kvm_irqchip slave, vm.GetIrqchip(KVM_IRQCHIP_PIC_SLAVE));
  ToProto(slave.chip.pic, state.mutable_pic_slave());
  SBX_ASSIGN_OR_RETURN(kvm_irqchip ioapic, vm.GetIrqchip(KVM_IRQCHIP_IOAPIC));
  ToProto(ioapic.chip.ioapic, state.mutable_ioapic());
  SBX_ASSIGN_OR_RETURN(kvm_pit_state2 pit, vm.GetPit2());
  for (const kvm_pit_channel_state& c : pit.channels) ToProto(c, state.mutable_pit()->add_channels());
  state.mutable_pit()->set_flags(pit.flags);
  SBX_ASSIGN_OR_RETURN(kvm_clock_data clock, vm.GetClock());
  state.mutable_clock()->set_clock(clock.clock);
  state.mutable_clock()->set_flags(clock.flags);
  return state;
}

absl::Status RestoreVm(Vm& vm, const pb::KvmVmState& state) {
  kvm_irqchip chip = {};
  chip.chip_id = KVM_IRQCHIP_PIC_MASTER;
  chip.chip.pic = FromProto(state.pic_master());
  SBX_RETURN_IF_ERROR(vm.SetIrqchip(chip));
  chip = {};
  chip.chip_id = KVM_IRQCHIP_PIC_SLAVE;
  chip.chip.pic = FromProto(state.pic_slave());
  SBX_RETURN_IF_ERROR(vm.SetIrqchip(chip));
  chip = {};
  chip.chip_id = KVM_IRQCHIP_IOAPIC;
  SBX_ASSIGN_OR_RETURN(chip.chip.ioapic, FromProto(state.ioapic()));
  SBX_RETURN_IF_ERROR(vm.SetIrqchip(chip));
  kvm_pit_state2 pit = {};
  if (state.pit().channels_size() != 3) {
    return BadSize("pit.channels", state.pit().channels_size(), 3);
  }
  for (int i = 0; i < 3; ++i) pit.channels[i] = FromProto(state.pit().channels(i));
  pit.flags = state.pit().flags();
  return vm.SetPit2(pit);
}

absl::Status SetVmClock(Vm& vm, const pb::ClockState& clock) {
  // Only the clock value: KVM_SET_CLOCK takes no other flag we would want
  // (KVM_CLOCK_REALTIME would make the guest's clock jump by the time the
  // snapshot was on disk; the agent steps the guest's clock instead).
  kvm_clock_data data = {};
  data.clock = clock.clock();
  return vm.SetClock(data);
}

}  // namespace sbx::vmm::snapshot
