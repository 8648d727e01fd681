package kappa

import (
	"testing"
)

func benchmarkStorageReadWrite(b *testing.B, s Storage) {
	f := storageMustOpen(b, s, "bench", true)
	buf := make([]byte, 4096)
	if _, err := f.WriteAt(make([]byte, 1<<20), 0); err != nil {
		b.Fatal(err)
	}
	b.Run("ReadAt4K", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		for i := 0; b.Loop(); i++ {
			if _, err := f.ReadAt(buf, int64(i%256)*4096); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("WriteAt4K", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		for i := 0; b.Loop(); i++ {
			if _, err := f.WriteAt(buf, int64(i%256)*4096); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ParallelReadAt4K", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, 4096)
			for i := 0; pb.Next(); i++ {
				if _, err := f.ReadAt(buf, int64(i%256)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

func BenchmarkDirStorage(b *testing.B) {
	s, err := OpenDir(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchmarkStorageReadWrite(b, s)
}

func BenchmarkMemStorage(b *testing.B) {
	benchmarkStorageReadWrite(b, NewMemStorage())
}
