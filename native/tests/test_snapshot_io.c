/* Native tests of memfile scanning (Full and Diff), hole punching and copy-out. */
#define _GNU_SOURCE
#include "../crc32c.h"
#include "../snapshot_io.h"
#include "check.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BS 4096u
#define NB 16u

static int temp_file(void)
{
    char path[] = "/tmp/wr-snapio-XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0)
        unlink(path);
    return fd;
}

static void write_block(int fd, uint64_t block, uint8_t value)
{
    uint8_t buf[BS];
    memset(buf, value, sizeof buf);
    CHECK_EQ(pwrite(fd, buf, BS, (off_t)(block * BS)), BS);
}

static int is_hole(int fd, uint64_t block)
{
    off_t d = lseek(fd, (off_t)(block * BS), SEEK_DATA);
    return d < 0 || (uint64_t)d >= (block + 1) * BS;
}

/* Full: blocks 0,1 data; 2,3 written zeros; 4..9 hole; 10 data; rest hole. */
static void test_full_scan_punches_zero_blocks(void)
{
    int fd = temp_file();
    CHECK(fd >= 0);
    CHECK_EQ(ftruncate(fd, NB * BS), 0);
    write_block(fd, 0, 1);
    write_block(fd, 1, 2);
    write_block(fd, 2, 0);
    write_block(fd, 3, 0);
    write_block(fd, 10, 3);
    struct wr_scan_result r;
    CHECK_EQ(wr_memfile_scan(fd, NB * BS, BS, 0, WR_SCAN_FULL, 1, &r, NULL), 0);
    uint64_t where;
    CHECK_EQ(wr_map_validate(r.entries, r.count, NB * BS, BS, 1, &where), WR_MAP_OK);
    CHECK_EQ(r.count, 4);
    CHECK(r.entries[0].length == 2 * BS && r.entries[0].source == 0);
    CHECK(r.entries[1].length == 8 * BS && r.entries[1].source == WR_SOURCE_ZERO);
    CHECK(r.entries[2].offset == 10 * BS && r.entries[2].storage_offset == 10 * BS);
    CHECK_EQ(r.data_bytes, 3 * BS);
    CHECK_EQ(r.zero_bytes, (NB - 3) * BS);
    CHECK_EQ(r.punched_bytes, 2 * BS);
    CHECK(is_hole(fd, 2) && is_hole(fd, 3) && !is_hole(fd, 1) && !is_hole(fd, 10));
    wr_scan_result_free(&r);
    close(fd);
}

static void test_diff_scan_maps_only_extents(void)
{
    int fd = temp_file();
    CHECK_EQ(ftruncate(fd, NB * BS), 0);
    write_block(fd, 3, 7);
    write_block(fd, 4, 0); /* dirtied to zeros: still dirty, maps to zero-fill */
    write_block(fd, 12, 9);
    struct wr_scan_result r;
    uint32_t crcs[NB];
    for (unsigned i = 0; i < NB; i++)
        crcs[i] = 0xDEADBEEFu; /* blocks outside the extents are not read: untouched */
    CHECK_EQ(wr_memfile_scan(fd, NB * BS, BS, 5, WR_SCAN_DIFF, 1, &r, crcs), 0);
    uint8_t block[BS];
    memset(block, 7, BS);
    CHECK_EQ(crcs[3], wr_crc32c(0, block, BS));
    memset(block, 0, BS);
    CHECK_EQ(crcs[4], wr_crc32c(0, block, BS)); /* read before the punch */
    memset(block, 9, BS);
    CHECK_EQ(crcs[12], wr_crc32c(0, block, BS));
    CHECK_EQ(crcs[0], 0xDEADBEEFu);
    CHECK_EQ(crcs[5], 0xDEADBEEFu);
    CHECK_EQ(r.count, 3);
    CHECK(r.entries[0].offset == 3 * BS && r.entries[0].source == 5);
    CHECK(r.entries[1].offset == 4 * BS && r.entries[1].source == WR_SOURCE_ZERO);
    CHECK(r.entries[2].offset == 12 * BS && r.entries[2].length == BS);
    CHECK(is_hole(fd, 4));
    wr_scan_result_free(&r);

    /* a data extent that does not end on a block boundary is refused */
    CHECK_EQ(wr_memfile_scan(fd, NB * BS, 2 * BS, 5, WR_SCAN_DIFF, 0, &r, NULL), -EINVAL);
    CHECK(r.entries == NULL);
    CHECK_EQ(r.bad_offset, 3 * BS);
    CHECK_EQ(wr_memfile_scan(fd, NB * BS + 1, BS, 5, WR_SCAN_DIFF, 0, &r, NULL), -EINVAL);
    close(fd);
}

static void test_copy_out(void)
{
    int a = temp_file(), b = temp_file(), out = temp_file();
    CHECK_EQ(ftruncate(out, 4 * BS), 0);
    write_block(a, 0, 0x11);
    write_block(b, 5, 0x22);
    struct wr_map_entry e[3] = {
        {.offset = 0, .length = BS, .storage_offset = 0, .source = 0},
        {.offset = BS, .length = 2 * BS, .source = WR_SOURCE_ZERO},
        {.offset = 3 * BS, .length = BS, .storage_offset = 5 * BS, .source = 1}};
    int fds[2] = {a, b};
    uint64_t failed;
    CHECK_EQ(wr_map_copy_out(e, 3, fds, 2, out, &failed), 0);
    uint8_t buf[4 * BS];
    CHECK_EQ(pread(out, buf, sizeof buf, 0), sizeof buf);
    CHECK(buf[0] == 0x11 && buf[BS - 1] == 0x11 && buf[BS] == 0 && buf[3 * BS - 1] == 0);
    CHECK(buf[3 * BS] == 0x22 && buf[4 * BS - 1] == 0x22);
    e[2].storage_offset = 6 * BS; /* past the end of b */
    CHECK_EQ(wr_map_copy_out(e, 3, fds, 2, out, &failed), -EIO);
    CHECK_EQ(failed, 2);
    CHECK_EQ(wr_map_copy_out(e, 3, fds, 1, out, &failed), -EINVAL);
    close(a);
    close(b);
    close(out);
}

/* Checksummed entries are read and compared block by block; the first bad
 * block is named; sources without checksums and zero-fill are skipped. */
static void test_map_verify(void)
{
    int a = temp_file(), b = temp_file();
    write_block(a, 0, 0x11);
    write_block(a, 1, 0x12);
    write_block(b, 0, 0x22);
    uint8_t block[BS];
    uint32_t ca[2], cb[1] = {0};
    memset(block, 0x11, BS);
    ca[0] = wr_crc32c(0, block, BS);
    memset(block, 0x12, BS);
    ca[1] = wr_crc32c(0, block, BS);
    struct wr_map_entry e[3] = {
        {.offset = 0, .length = 2 * BS, .storage_offset = 0, .source = 0},
        {.offset = 2 * BS, .length = BS, .source = WR_SOURCE_ZERO},
        {.offset = 3 * BS, .length = BS, .storage_offset = 0, .source = 1},
    };
    int fds[2] = {a, b};
    const uint32_t *crcs[2] = {ca, NULL};
    uint64_t failed, bad;
    CHECK_EQ(wr_map_verify(e, 3, fds, crcs, 2, BS, &failed, &bad), 0);
    crcs[1] = cb; /* wrong for b's block */
    CHECK_EQ(wr_map_verify(e, 3, fds, crcs, 2, BS, &failed, &bad), -EBADMSG);
    CHECK_EQ(failed, 2);
    CHECK_EQ(bad, 0);
    write_block(a, 1, 0x13); /* rot in a's second block */
    CHECK_EQ(wr_map_verify(e, 3, fds, crcs, 2, BS, &failed, &bad), -EBADMSG);
    CHECK_EQ(failed, 0);
    CHECK_EQ(bad, BS);
    close(a);
    close(b);
}

int main(void)
{
    test_map_verify();
    test_full_scan_punches_zero_blocks();
    test_diff_scan_maps_only_extents();
    test_copy_out();
    return check_report("test_snapshot_io");
}
