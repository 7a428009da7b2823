/* Native tests of the VMM-side helpers that need no handler: touch orders,
 * mapping arguments, and the toucher on plain (unregistered) memory. */
#include "../sim/uffd_vmm.h"
#include "check.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int is_permutation(const uint64_t *v, uint64_t n)
{
    char *seen = calloc(n, 1);
    int ok = seen != NULL;
    for (uint64_t i = 0; ok && i < n; i++) {
        if (v[i] >= n || seen[v[i]])
            ok = 0;
        else
            seen[v[i]] = 1;
    }
    free(seen);
    return ok;
}

static void test_orders(void)
{
    enum { N = 1001 };
    uint64_t v[N];
    CHECK_EQ(wr_touch_order(WR_ORDER_SEQUENTIAL, N, 0, v), 0);
    CHECK(is_permutation(v, N));
    CHECK_EQ(v[N - 1], N - 1);
    CHECK_EQ(wr_touch_order(WR_ORDER_RANDOM, N, 42, v), 0);
    CHECK(is_permutation(v, N));
    CHECK_EQ(wr_touch_order(WR_ORDER_STRIDED, N, 16, v), 0);
    CHECK(is_permutation(v, N));
    CHECK_EQ(v[1], 16);
    CHECK_EQ(wr_touch_order(WR_ORDER_STRIDED, N, N + 5, v), 0);
    CHECK(is_permutation(v, N));
    CHECK_EQ(wr_touch_order(WR_ORDER_STRIDED, N, 0, v), -EINVAL);
    CHECK_EQ(wr_touch_order(99, N, 0, v), -EINVAL);
    CHECK_EQ(wr_touch_order(WR_ORDER_RANDOM, 0, 1, v), 0);
}

static void test_map_and_touch(void)
{
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), addr = 0;
    CHECK_EQ(wr_vmm_map(0, page, 0, &addr), -EINVAL);
    CHECK_EQ(wr_vmm_map(page + 1, page, 0, &addr), -EINVAL);
    CHECK_EQ(wr_vmm_map(3 * page, 3 * page, 0, &addr), -EINVAL);
    CHECK_EQ(wr_vmm_map(8 * page, page, 1, &addr), 0);
    uint64_t order[8], lat[8], sum = 1;
    CHECK_EQ(wr_touch_order(WR_ORDER_RANDOM, 8, 3, order), 0);
    CHECK_EQ(wr_touch(addr, page, order, 8, 1, lat, NULL), 8);
    CHECK_EQ(wr_touch(addr, page, order, 8, 0, NULL, &sum), 8);
    CHECK_EQ(sum, 0 + 1 + 2 + 3 + 4 + 5 + 6 + 7);
    uint8_t buf[16];
    memset(buf, 0xAB, sizeof buf);
    CHECK_EQ(wr_vmm_write(addr + page - 8, buf, sizeof buf), 0);
    memset(buf, 0, sizeof buf);
    CHECK_EQ(wr_vmm_read(addr + page - 8, buf, sizeof buf), 0);
    CHECK_EQ(buf[15], 0xAB);
    CHECK_EQ(wr_vmm_discard(addr, 8 * page), 0);
    CHECK_EQ(wr_vmm_read(addr + page - 8, buf, sizeof buf), 0);
    CHECK_EQ(buf[15], 0); /* anonymous memory reads zero after DONTNEED */
    CHECK_EQ(wr_vmm_unmap(addr, 8 * page), 0);
}

int main(void)
{
    test_orders();
    test_map_and_touch();
    return check_report("test_uffd_vmm");
}
