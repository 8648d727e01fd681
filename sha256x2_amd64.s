//go:build amd64 && !purego

#include "textflag.h"

// sha256Blocks2 runs SHA-256's compression function over n blocks of two
// messages at once, one lane each, with the SHA extensions (SHA-NI): the
// rounds of one message wait on each other, so the other's fill the gaps.
// A lane is a state of eight words, a..h, and 64n bytes of message. The
// message schedule and round structure are FIPS 180-4's, in the order
// the SHA256RNDS2, SHA256MSG1 and SHA256MSG2 instructions take them:
// each group of four rounds adds K and the words to X0, runs two rounds,
// moves the next two words down and runs two more, while the words of a
// later group are computed from those before.

// Registers: AX, BX the states; SI, DI the messages; DX the blocks left;
// R8 the round constants; X15 the byte order mask. Lane A: X1 (ABEF), X2
// (CDGH), X3-X6 the words, X13 scratch; lane B: X7, X8, X9-X12, X14. X0
// holds the words plus constants for SHA256RNDS2, which reads it.

// Four rounds with no new words.
#define ROUNDS(k, s0, s1, m) \
	MOVOU k(R8), X0 \
	PADDD m, X0 \
	SHA256RNDS2 X0, s0, s1 \
	PSHUFD $0x0e, X0, X0 \
	SHA256RNDS2 X0, s1, s0

// Four rounds, and the first half of the words four groups on.
#define ROUNDS1(k, s0, s1, m, prev) \
	ROUNDS(k, s0, s1, m) \
	SHA256MSG1 m, prev

// Four rounds, and the words of the next group finished (into next).
#define ROUNDS2(k, s0, s1, m, prev, next, t) \
	MOVOU k(R8), X0 \
	PADDD m, X0 \
	SHA256RNDS2 X0, s0, s1 \
	MOVO m, t \
	PALIGNR $4, prev, t \
	PADDD t, next \
	SHA256MSG2 m, next \
	PSHUFD $0x0e, X0, X0 \
	SHA256RNDS2 X0, s1, s0

// Both.
#define ROUNDS12(k, s0, s1, m, prev, next, t) \
	ROUNDS2(k, s0, s1, m, prev, next, t) \
	SHA256MSG1 m, prev

// Load a state a..h from p into ABEF (s0) and CDGH (s1), using t.
#define LOADSTATE(p, s0, s1, t) \
	MOVOU (p), s0 \
	MOVOU 16(p), s1 \
	PSHUFD $0xb1, s0, s0 \
	PSHUFD $0x1b, s1, s1 \
	MOVO s0, t \
	PALIGNR $8, s1, s0 \
	PBLENDW $0xf0, t, s1

// Store ABEF (s0) and CDGH (s1) back to p as a..h, using t.
#define STORESTATE(p, s0, s1, t) \
	PSHUFD $0x1b, s0, s0 \
	PSHUFD $0xb1, s1, s1 \
	MOVO s0, t \
	PBLENDW $0xf0, s1, s0 \
	PALIGNR $8, t, s1 \
	MOVOU s0, (p) \
	MOVOU s1, 16(p)

// Load a block's 16 words from p, big-endian.
#define LOADWORDS(p, m0, m1, m2, m3) \
	MOVOU (p), m0 \
	PSHUFB X15, m0 \
	MOVOU 16(p), m1 \
	PSHUFB X15, m1 \
	MOVOU 32(p), m2 \
	PSHUFB X15, m2 \
	MOVOU 48(p), m3 \
	PSHUFB X15, m3

// func sha256Blocks2(h0, h1 *[8]uint32, p0, p1 *byte, n int)
TEXT ·sha256Blocks2(SB), NOSPLIT, $64-40
	MOVQ h0+0(FP), AX
	MOVQ h1+8(FP), BX
	MOVQ p0+16(FP), SI
	MOVQ p1+24(FP), DI
	MOVQ n+32(FP), DX
	TESTQ DX, DX
	JZ done
	LEAQ sha256K<>(SB), R8
	MOVOU sha256Swap<>(SB), X15
	LOADSTATE(AX, X1, X2, X13)
	LOADSTATE(BX, X7, X8, X14)

loop:
	MOVOU X1, 0(SP)
	MOVOU X2, 16(SP)
	MOVOU X7, 32(SP)
	MOVOU X8, 48(SP)
	LOADWORDS(SI, X3, X4, X5, X6)
	LOADWORDS(DI, X9, X10, X11, X12)

	ROUNDS(0, X1, X2, X3)
	ROUNDS(0, X7, X8, X9)
	ROUNDS1(16, X1, X2, X4, X3)
	ROUNDS1(16, X7, X8, X10, X9)
	ROUNDS1(32, X1, X2, X5, X4)
	ROUNDS1(32, X7, X8, X11, X10)
	ROUNDS12(48, X1, X2, X6, X5, X3, X13)
	ROUNDS12(48, X7, X8, X12, X11, X9, X14)
	ROUNDS12(64, X1, X2, X3, X6, X4, X13)
	ROUNDS12(64, X7, X8, X9, X12, X10, X14)
	ROUNDS12(80, X1, X2, X4, X3, X5, X13)
	ROUNDS12(80, X7, X8, X10, X9, X11, X14)
	ROUNDS12(96, X1, X2, X5, X4, X6, X13)
	ROUNDS12(96, X7, X8, X11, X10, X12, X14)
	ROUNDS12(112, X1, X2, X6, X5, X3, X13)
	ROUNDS12(112, X7, X8, X12, X11, X9, X14)
	ROUNDS12(128, X1, X2, X3, X6, X4, X13)
	ROUNDS12(128, X7, X8, X9, X12, X10, X14)
	ROUNDS12(144, X1, X2, X4, X3, X5, X13)
	ROUNDS12(144, X7, X8, X10, X9, X11, X14)
	ROUNDS12(160, X1, X2, X5, X4, X6, X13)
	ROUNDS12(160, X7, X8, X11, X10, X12, X14)
	ROUNDS12(176, X1, X2, X6, X5, X3, X13)
	ROUNDS12(176, X7, X8, X12, X11, X9, X14)
	ROUNDS12(192, X1, X2, X3, X6, X4, X13)
	ROUNDS12(192, X7, X8, X9, X12, X10, X14)
	ROUNDS2(208, X1, X2, X4, X3, X5, X13)
	ROUNDS2(208, X7, X8, X10, X9, X11, X14)
	ROUNDS2(224, X1, X2, X5, X4, X6, X13)
	ROUNDS2(224, X7, X8, X11, X10, X12, X14)
	ROUNDS(240, X1, X2, X6)
	ROUNDS(240, X7, X8, X12)

	MOVOU 0(SP), X13
	PADDD X13, X1
	MOVOU 16(SP), X13
	PADDD X13, X2
	MOVOU 32(SP), X14
	PADDD X14, X7
	MOVOU 48(SP), X14
	PADDD X14, X8
	ADDQ $64, SI
	ADDQ $64, DI
	DECQ DX
	JNZ loop

	STORESTATE(AX, X1, X2, X13)
	STORESTATE(BX, X7, X8, X14)

done:
	RET

// func cpuid(leaf, sub uint32) (a, b, c, d uint32)
TEXT ·cpuid(SB), NOSPLIT, $0-24
	MOVL leaf+0(FP), AX
	MOVL sub+4(FP), CX
	CPUID
	MOVL AX, a+8(FP)
	MOVL BX, b+12(FP)
	MOVL CX, c+16(FP)
	MOVL DX, d+20(FP)
	RET

// The round constants, four to a group.
DATA sha256K<>+0(SB)/4, $0x428a2f98
DATA sha256K<>+4(SB)/4, $0x71374491
DATA sha256K<>+8(SB)/4, $0xb5c0fbcf
DATA sha256K<>+12(SB)/4, $0xe9b5dba5
DATA sha256K<>+16(SB)/4, $0x3956c25b
DATA sha256K<>+20(SB)/4, $0x59f111f1
DATA sha256K<>+24(SB)/4, $0x923f82a4
DATA sha256K<>+28(SB)/4, $0xab1c5ed5
DATA sha256K<>+32(SB)/4, $0xd807aa98
DATA sha256K<>+36(SB)/4, $0x12835b01
DATA sha256K<>+40(SB)/4, $0x243185be
DATA sha256K<>+44(SB)/4, $0x550c7dc3
DATA sha256K<>+48(SB)/4, $0x72be5d74
DATA sha256K<>+52(SB)/4, $0x80deb1fe
DATA sha256K<>+56(SB)/4, $0x9bdc06a7
DATA sha256K<>+60(SB)/4, $0xc19bf174
DATA sha256K<>+64(SB)/4, $0xe49b69c1
DATA sha256K<>+68(SB)/4, $0xefbe4786
DATA sha256K<>+72(SB)/4, $0x0fc19dc6
DATA sha256K<>+76(SB)/4, $0x240ca1cc
DATA sha256K<>+80(SB)/4, $0x2de92c6f
DATA sha256K<>+84(SB)/4, $0x4a7484aa
DATA sha256K<>+88(SB)/4, $0x5cb0a9dc
DATA sha256K<>+92(SB)/4, $0x76f988da
DATA sha256K<>+96(SB)/4, $0x983e5152
DATA sha256K<>+100(SB)/4, $0xa831c66d
DATA sha256K<>+104(SB)/4, $0xb00327c8
DATA sha256K<>+108(SB)/4, $0xbf597fc7
DATA sha256K<>+112(SB)/4, $0xc6e00bf3
DATA sha256K<>+116(SB)/4, $0xd5a79147
DATA sha256K<>+120(SB)/4, $0x06ca6351
DATA sha256K<>+124(SB)/4, $0x14292967
DATA sha256K<>+128(SB)/4, $0x27b70a85
DATA sha256K<>+132(SB)/4, $0x2e1b2138
DATA sha256K<>+136(SB)/4, $0x4d2c6dfc
DATA sha256K<>+140(SB)/4, $0x53380d13
DATA sha256K<>+144(SB)/4, $0x650a7354
DATA sha256K<>+148(SB)/4, $0x766a0abb
DATA sha256K<>+152(SB)/4, $0x81c2c92e
DATA sha256K<>+156(SB)/4, $0x92722c85
DATA sha256K<>+160(SB)/4, $0xa2bfe8a1
DATA sha256K<>+164(SB)/4, $0xa81a664b
DATA sha256K<>+168(SB)/4, $0xc24b8b70
DATA sha256K<>+172(SB)/4, $0xc76c51a3
DATA sha256K<>+176(SB)/4, $0xd192e819
DATA sha256K<>+180(SB)/4, $0xd6990624
DATA sha256K<>+184(SB)/4, $0xf40e3585
DATA sha256K<>+188(SB)/4, $0x106aa070
DATA sha256K<>+192(SB)/4, $0x19a4c116
DATA sha256K<>+196(SB)/4, $0x1e376c08
DATA sha256K<>+200(SB)/4, $0x2748774c
DATA sha256K<>+204(SB)/4, $0x34b0bcb5
DATA sha256K<>+208(SB)/4, $0x391c0cb3
DATA sha256K<>+212(SB)/4, $0x4ed8aa4a
DATA sha256K<>+216(SB)/4, $0x5b9cca4f
DATA sha256K<>+220(SB)/4, $0x682e6ff3
DATA sha256K<>+224(SB)/4, $0x748f82ee
DATA sha256K<>+228(SB)/4, $0x78a5636f
DATA sha256K<>+232(SB)/4, $0x84c87814
DATA sha256K<>+236(SB)/4, $0x8cc70208
DATA sha256K<>+240(SB)/4, $0x90befffa
DATA sha256K<>+244(SB)/4, $0xa4506ceb
DATA sha256K<>+248(SB)/4, $0xbef9a3f7
DATA sha256K<>+252(SB)/4, $0xc67178f2
GLOBL sha256K<>(SB), RODATA|NOPTR, $256

// PSHUFB mask: each 32-bit word's bytes reversed.
DATA sha256Swap<>+0(SB)/8, $0x0405060700010203
DATA sha256Swap<>+8(SB)/8, $0x0c0d0e0f08090a0b
GLOBL sha256Swap<>(SB), RODATA|NOPTR, $16
