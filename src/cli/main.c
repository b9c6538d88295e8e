#include <stdio.h>
int main(void) { puts("imgbuild"); return 0; }
