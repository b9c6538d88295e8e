/* Image references: [host[:port]/]repo[:tag][@digest], normalised as Docker
 * does (docker.io default registry, "library/" for official images, tag
 * "latest" when neither tag nor digest is given). */
#ifndef IB_OCI_REFERENCE_H
#define IB_OCI_REFERENCE_H

typedef struct {
    char *registry; /* "docker.io", "harbor.local:8443", "localhost" */
    char *repo;     /* "library/busybox", "wepp/weppcloud" */
    char *tag;      /* NULL if only a digest was given */
    char *digest;   /* NULL or "sha256:..." */
} ib_ref;

/* IB_EINVALID with "invalid reference 'x': why" on bad input. default_tag may be NULL. */
int ib_ref_parse(ib_ref *out, const char *s, const char *default_tag);
void ib_ref_clear(ib_ref *r);
/* "registry/repo:tag" (or "@digest" when no tag). Caller frees. */
char *ib_ref_string(const ib_ref *r);
/* "registry/repo". Caller frees. */
char *ib_ref_name(const ib_ref *r);
/* 1 if t is a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}). */
int ib_ref_valid_tag(const char *t);

#endif
