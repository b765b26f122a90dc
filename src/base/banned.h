/*
 * banned.h: functions kiln code must not call (unbounded, racy or
 * locale-dependent). Included at the end of base.h, after the system headers
 * it pulls in, so every kiln .c file that includes base.h gets it. [git, curl]
 */
#pragma once

#define BANNED(f) kiln_banned_function_##f##_see_banned_h

#undef strcpy
#define strcpy(a, b) BANNED(strcpy)
#undef strcat
#define strcat(a, b) BANNED(strcat)
#undef sprintf
#define sprintf(...) BANNED(sprintf)
#undef vsprintf
#define vsprintf(...) BANNED(vsprintf)
#undef strtok
#define strtok(a, b) BANNED(strtok)
#undef atoi
#define atoi(a) BANNED(atoi)
#undef atol
#define atol(a) BANNED(atol)
#undef gets
#define gets(a) BANNED(gets)
#undef system
#define system(a) BANNED(system)
#undef gmtime
#define gmtime(a) BANNED(gmtime)
#undef localtime
#define localtime(a) BANNED(localtime)
