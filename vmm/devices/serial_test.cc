#include "vmm/devices/serial.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sbx::vmm {
namespace {

class SerialTest : public ::testing::Test {
 protected:
  SerialTest()
      : serial_([this](std::span<const uint8_t> b) { out_.append(b.begin(), b.end()); },
                [this] { ++irqs_; }) {}

  uint8_t In(uint64_t reg) {
    uint8_t v = 0;
    serial_.Read(reg, std::span(&v, 1));
    return v;
  }
  void Out(uint64_t reg, uint8_t v) { serial_.Write(reg, std::span(&v, 1)); }

  std::string out_;
  int irqs_ = 0;
  Serial serial_;
};

TEST_F(SerialTest, TransmitsBytesToTheOutput) {
  for (char c : std::string("hi\n")) Out(0, static_cast<uint8_t>(c));
  EXPECT_EQ(out_, "hi\n");
  // Transmitter always ready.
  EXPECT_EQ(In(5) & 0x60, 0x60);
  EXPECT_EQ(irqs_, 0);  // interrupts not enabled
}

TEST_F(SerialTest, ThrEmptyInterruptWhenEnabledAndAcknowledgedByIir) {
  Out(1, 0x02);  // IER: THRI
  EXPECT_EQ(irqs_, 1);  // THR already empty
  EXPECT_EQ(In(2) & 0x0f, 0x02);  // IIR: THR empty
  EXPECT_EQ(In(2) & 0x0f, 0x01);  // read acknowledged it
  Out(0, 'x');
  EXPECT_EQ(irqs_, 2);
  EXPECT_EQ(In(2) & 0x0f, 0x02);
}

TEST_F(SerialTest, ReceivedBytesRaiseDataReadyAndAreReadInOrder) {
  Out(1, 0x01);  // IER: RDI
  std::string in = "ab";
  serial_.Receive(std::span(reinterpret_cast<const uint8_t*>(in.data()), in.size()));
  EXPECT_GE(irqs_, 1);
  EXPECT_EQ(In(5) & 0x01, 0x01);  // LSR: data ready
  EXPECT_EQ(In(2) & 0x0f, 0x04);  // IIR: received data
  EXPECT_EQ(In(0), 'a');
  EXPECT_EQ(In(0), 'b');
  EXPECT_EQ(In(5) & 0x01, 0x00);
  EXPECT_EQ(In(2) & 0x0f, 0x01);
}

TEST_F(SerialTest, LoopbackReturnsTransmittedBytesAndModemLines) {
  Out(4, 0x10 | 0x0a);  // MCR: loopback, RTS, OUT2
  Out(0, 0x5a);
  EXPECT_TRUE(out_.empty());  // nothing leaves in loopback
  EXPECT_EQ(In(0), 0x5a);
  EXPECT_EQ(In(6) & 0xf0, 0x10 | 0x80);  // CTS from RTS, DCD from OUT2
}

TEST_F(SerialTest, DivisorLatchAndScratchRegister) {
  Out(3, 0x83);  // DLAB on
  Out(0, 0x01);
  Out(1, 0x02);
  EXPECT_EQ(In(0), 0x01);
  EXPECT_EQ(In(1), 0x02);
  Out(3, 0x03);  // DLAB off
  Out(0, 'z');   // THR again
  EXPECT_EQ(out_, "z");
  Out(7, 0xa5);
  EXPECT_EQ(In(7), 0xa5);
}

TEST_F(SerialTest, WideAccessesAndUnknownOffsetsAreHarmless) {
  uint32_t v = 0x41414141;
  serial_.Write(0, std::span(reinterpret_cast<uint8_t*>(&v), 4));
  EXPECT_TRUE(out_.empty());
  uint32_t r = 0;
  serial_.Read(0, std::span(reinterpret_cast<uint8_t*>(&r), 4));
  EXPECT_EQ(r, 0xffffffffu);
  Out(9, 1);
  EXPECT_EQ(In(9), 0xff);
}

TEST_F(SerialTest, InputQueueIsBounded) {
  std::vector<uint8_t> flood(200 * 1024, 'x');
  serial_.Receive(flood);
  int n = 0;
  while (In(5) & 1) {
    In(0);
    ++n;
  }
  EXPECT_EQ(n, 64 * 1024);
}

}  // namespace
}  // namespace sbx::vmm
