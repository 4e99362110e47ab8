/* fashsdk's native graph walk (fashsdk/index/native_walk.py compiles and loads it).

   A beam search over the level-0 links of the index's hnswlib graph, scoring nodes on int8
   codes of a low-dimensional projection of the vectors (one cache line per node instead of
   sixteen), then re-scoring the beam exactly on the float32 vectors. Plain C: the compiler
   vectorises the dot products for the machine it runs on. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define STARTS 4  /* seeds the walk starts from */
#define MAX_WIDTH 1024  /* links per node at most (hnswlib's 2 M, M <= 256 here) */

typedef struct { float s; int32_t id; } fs_item;

typedef struct {
    const void *codes;       /* (n, p) int8 (x W) / scale, rounded; or float32 x W when float_codes */
    const float *scale;      /* (d,) per-dimension step */
    const float *exact;      /* (slots, d) float32 rows by label, or (n, d) by node */
    const int32_t *links;    /* (n, width) neighbour node ids, -1 padded */
    const int64_t *labels;   /* (n,) node -> label (row of exact) */
    const uint8_t *alive;    /* (n,) by node: 0 = deleted, walked through but never returned */
    const int32_t *seeds;    /* (n_seeds,) nodes scored first; the best few start the walk */
    const void *seed_codes;  /* (n_seeds, p) their codes, contiguous */
    const float *projection; /* (d, p): codes hold (x W) / scale */
    int32_t n, d, p, width, n_seeds;
    int32_t exact_by_node;   /* 1: exact rows are in node order */
    int32_t float_codes;     /* 1: codes are float32 (spaces of near-duplicates that int8 would blur) */
} fs_graph;

typedef struct {
    float *query;            /* (d,) written by the caller */
    float *scaled;           /* (p,) */
    uint8_t *visited;        /* (n,) tags: one byte keeps a million nodes' tags in L2 */
    fs_item *candidates;     /* (n + STARTS,) */
    fs_item *beam;           /* (ef + 1,) */
    int64_t *out_labels;     /* (k,) */
    float *out_scores;       /* (k,) */
    uint32_t tag;            /* 1..255 */
    int32_t capacity;        /* room in beam - 1 (the largest ef) */
} fs_scratch;

static inline float dot_coded(const float *q, const int8_t *x, int d) {
    float acc = 0.f;
    for (int j = 0; j < d; j++) acc += q[j] * (float)x[j];
    return acc;
}
static inline float dot_exact(const float *q, const float *x, int d) {
    float acc = 0.f;
    for (int j = 0; j < d; j++) acc += q[j] * x[j];
    return acc;
}
static inline float score_row(const fs_graph *g, const float *q, const void *base, size_t row) {
    if (g->float_codes) return dot_exact(q, (const float *)base + row * g->p, g->p);
    return dot_coded(q, (const int8_t *)base + row * g->p, g->p);
}
static inline const char *code_address(const fs_graph *g, size_t row) {
    return (const char *)g->codes + row * (size_t)g->p * (g->float_codes ? sizeof(float) : 1);
}
static void push_best_first(fs_item *h, int *n, fs_item v) {  /* max-heap */
    int i = (*n)++;
    while (i > 0) { int p = (i - 1) >> 1; if (h[p].s >= v.s) break; h[i] = h[p]; i = p; }
    h[i] = v;
}
static fs_item pop_best(fs_item *h, int *n) {
    fs_item top = h[0], last = h[--(*n)];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1].s > h[c].s) c++;
        if (h[c].s <= last.s) break;
        h[i] = h[c]; i = c;
    }
    h[i] = last;
    return top;
}
static void push_worst_first(fs_item *h, int *n, fs_item v) {  /* min-heap */
    int i = (*n)++;
    while (i > 0) { int p = (i - 1) >> 1; if (h[p].s <= v.s) break; h[i] = h[p]; i = p; }
    h[i] = v;
}
static void pop_worst(fs_item *h, int *n) {
    fs_item last = h[--(*n)];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1].s < h[c].s) c++;
        if (h[c].s >= last.s) break;
        h[i] = h[c]; i = c;
    }
    h[i] = last;
}
static void offer(fs_scratch *s, const fs_graph *g, int *nc, int *nb, int ef, int32_t v, float score) {
    fs_item it = { score, v };
    push_best_first(s->candidates, nc, it);
    if (g->alive[v]) {
        push_worst_first(s->beam, nb, it);
        if (*nb > ef) pop_worst(s->beam, nb);
    }
}

/* Top-k labels (never skip_label) of s->query; returns how many were found (<= k). start_node >= 0
   (the query's own item, when it is indexed) starts the walk instead of the best seeds. */
int fs_search(const fs_graph *g, fs_scratch *s, int ef, int k, int64_t skip_label, int32_t start_node) {
    const int d = g->d;
    if (ef > s->capacity) ef = s->capacity;
    if (ef < k) ef = k;
    const int p = g->p;
    for (int j = 0; j < p; j++) s->scaled[j] = 0.f;
    for (int i = 0; i < d; i++) {
        const float qi = s->query[i];
        const float *row = g->projection + (size_t)i * p;
        for (int j = 0; j < p; j++) s->scaled[j] += qi * row[j];
    }
    for (int j = 0; j < p; j++) s->scaled[j] *= g->scale[j];
    if (++s->tag > 255) {  /* wrapped: clear the tags once every 255 queries */
        memset(s->visited, 0, (size_t)g->n);
        s->tag = 1;
    }
    const uint8_t tag = (uint8_t)s->tag;
    int nc = 0, nb = 0;
    fs_item start[STARTS];  /* the best seeds, best first */
    int ns = 0;
    const int n_seeds = start_node >= 0 && start_node < g->n ? 0 : g->n_seeds;  /* the query's own item beats any seed */
    for (int e = 0; e < n_seeds; e++) {
        float score = score_row(g, s->scaled, g->seed_codes, (size_t)e);
        int pos;
        if (ns < STARTS) pos = ns++;
        else if (score > start[STARTS - 1].s) pos = STARTS - 1;
        else continue;
        while (pos > 0 && start[pos - 1].s < score) { start[pos] = start[pos - 1]; pos--; }
        start[pos].s = score;
        start[pos].id = g->seeds[e];
    }
    if (start_node >= 0 && start_node < g->n) {
        s->visited[start_node] = tag;
        offer(s, g, &nc, &nb, ef, start_node, score_row(g, s->scaled, g->codes, (size_t)start_node));
    }
    for (int e = 0; e < ns; e++) {
        int32_t v = start[e].id;
        if (s->visited[v] == tag) continue;
        s->visited[v] = tag;
        offer(s, g, &nc, &nb, ef, v, start[e].s);
    }
    while (nc > 0) {
        fs_item c = pop_best(s->candidates, &nc);
        if (nb >= ef && c.s < s->beam[0].s) break;
        if (nc > 0) __builtin_prefetch(g->links + (size_t)s->candidates[0].id * g->width);  /* likely next */
        const int32_t *near = g->links + (size_t)c.id * g->width;
        int32_t fresh[MAX_WIDTH];  /* unvisited neighbours: their codes are fetched together */
        int nf = 0;
        for (int j = 0; j < g->width && near[j] >= 0; j++) {
            int32_t v = near[j];
            if (s->visited[v] == tag) continue;
            s->visited[v] = tag;
            __builtin_prefetch(code_address(g, (size_t)v));
            fresh[nf++] = v;
        }
        for (int j = 0; j < nf; j++) {
            int32_t v = fresh[j];
            float score = score_row(g, s->scaled, g->codes, (size_t)v);
            if (nb < ef || score > s->beam[0].s) offer(s, g, &nc, &nb, ef, v, score);
        }
    }
    for (int i = 0; i < nb; i++) {
        size_t at = g->exact_by_node ? (size_t)s->beam[i].id : (size_t)g->labels[s->beam[i].id];
        const char *row = (const char *)(g->exact + at * d);
        for (size_t b = 0; b < (size_t)d * sizeof(float); b += 64) __builtin_prefetch(row + b);
    }
    int m = 0;  /* exact re-rank of the beam: insertion into the sorted top k */
    for (int i = 0; i < nb; i++) {
        int64_t label = g->labels[s->beam[i].id];
        if (label == skip_label) continue;
        size_t at = g->exact_by_node ? (size_t)s->beam[i].id : (size_t)label;
        float score = dot_exact(s->query, g->exact + at * d, d);
        int pos;
        if (m < k) pos = m++;
        else if (score > s->out_scores[k - 1]) pos = k - 1;
        else continue;
        while (pos > 0 && s->out_scores[pos - 1] < score) {
            s->out_scores[pos] = s->out_scores[pos - 1];
            s->out_labels[pos] = s->out_labels[pos - 1];
            pos--;
        }
        s->out_scores[pos] = score;
        s->out_labels[pos] = label;
    }
    return m;
}
