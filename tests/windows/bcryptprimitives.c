/*
 * Test-only stand-in for bcryptprimitives.dll, which Wine 8.0 lacks.
 *
 * Rust's std for Windows imports ProcessPrng from bcryptprimitives.dll
 * (present since Windows 10); without it a Rust .exe dies under Wine 8.0
 * with c0000135 (DLL not found). Placed next to vma.exe only in the Wine
 * smoke test (tests/windows-smoke.sh); never shipped. It forwards to
 * advapi32's SystemFunction036 (RtlGenRandom), which Wine has.
 *
 * Build: x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll \
 *        bcryptprimitives.c -ladvapi32
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
