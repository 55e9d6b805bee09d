/* The agent role. Its API is public: see include/culvert/agent.h. */
#ifndef CV_AGENT_H
#define CV_AGENT_H

#include "culvert/agent.h"

#endif
